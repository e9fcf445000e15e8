"""Stage 1 of AnimateLCM: image consistency distillation into a spatial LoRA (LCM-LoRA style).

    python train_image.py --sd15 v1-5-pruned-emaonly.safetensors --data my_images/ --out runs/stage1
    python train_image.py ... --resume true       # continue the run in --out (--overwrite true: start it over)
    torchrun --nproc_per_node 4 train_image.py ...
    python train_image.py --objective diffusion --sd15 start.safetensors ...   # train a teacher instead

Teacher: SD1.5 (or any personalized SD1.5 checkpoint), frozen, classifier-free guidance inside one
DDIM solver step on the 50-point grid. Student: the same UNet with a trainable rank-64 LoRA on the
LCM-LoRA layers. Target: the student's own current weights without gradient (the LCM-LoRA scripts
keep no separate EMA copy), or an EMA copy of the LoRA with --ema-decay > 0.
`--objective diffusion` trains the whole UNet with the plain epsilon-prediction loss instead (captions
dropped with --caption-dropout so classifier-free guidance works): a teacher from scratch, as the toy
world needs, or a fine-tune; it writes model.safetensors (SD1.5 single-file layout, the EMA weights with
--ema-decay > 0).
Outputs in --out: lora.safetensors (kohya format: ComfyUI, A1111 and diffusers load it; the schedule
and settings in its metadata), checkpoint.pt (full resume state), log.jsonl, val/ PNGs.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch

import cli
from data import ImageCaptionDataset, ResumableSampler, collate
from lcm.distill import DENOISING_WEIGHTS, LOSS_WEIGHTS, denoising_loss, distillation_loss
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from sd15 import load_sd15, save_sd15
from run_folder import one_run, restoring, start_run
from training import (autocast, check_batch, check_settings, drop_captions, encode_latents, parse_settings, rng_state,
                      save_checkpoint, set_rng_state, setup, teardown, train_loop, uniform)
from unet.lora import LoRANetwork


@dataclasses.dataclass
class Settings:
    sd15: str = ""
    data: str = ""                 # folder of images with captions (see data.py)
    objective: str = "consistency"  # or "diffusion": train the UNet itself (a teacher)
    caption_dropout: float = 0.1   # --objective diffusion: share of empty captions (for CFG)
    out: str = "runs/stage1"
    resume: bool = False           # continue the run in --out from its checkpoint.pt
    overwrite: bool = False        # delete the run in --out and start again
    size: int = 512
    batch: int = 4                 # per process
    grad_accum: int = 1
    steps: int = 2000
    lr: float = 1e-4
    warmup_steps: int = 100
    lr_anneal_at: int = 0          # from this step on the learning rate is --lr x --lr-anneal-factor (0: never)
    lr_anneal_factor: float = 0.2
    grad_clip: float = 1.0
    lora_rank: int = 64
    lora_alpha: float = 8.0        # alpha/rank = 1/8, as the released AnimateLCM and LCM-LoRA files
    ema_decay: float = 0.0         # 0: the target is the online model itself (LCM-LoRA recipe); diffusion: EMA
    w_min: float = 5.0             # guidance w ~ U[w_min, w_max] in the LCM form (1 + w) c - w u
    w_max: float = 15.0
    original_steps: int = 50       # the DDIM solver grid: k = 1000 / 50 = 20
    loss: str = "huber"
    loss_weight: str = "uniform"   # lambda_n: uniform or sqrt_snr (loss_weight); diffusion: uniform, sqrt_v or v
    beta_schedule: str = "sqrt_beta_linear"  # SD1.5's own training schedule
    precision: str = "bf16"        # autocast on GPU: bf16, fp16 or fp32; CPU runs fp32
    gradient_checkpointing: bool = True
    save_every: int = 250
    log_every: int = 10
    val_every: int = 250
    val_prompt: str = "a photo of a red apple on a wooden table"
    val_score: str = ""            # "toy": log prompt accuracy of fixed samples at each validation
    seed: int = 0
    device: str = "auto"
    workers: int = 2


PRODUCTS = ("lora.safetensors", "model.safetensors")  # what a run exports into --out


@one_run
def main(argv=None):
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s, objective=("consistency", "diffusion"), val_score=("", "toy"),
                   loss_weight=LOSS_WEIGHTS if s.objective == "consistency" else DENOISING_WEIGHTS)
    distill = s.objective == "consistency"
    rt = setup(s.seed, s.device)
    out = Path(s.out)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    dataset = ImageCaptionDataset(s.data, size=s.size)  # bad data is refused before any model loads
    check_batch(dataset, s, rt)
    state = start_run(s, rt, PRODUCTS)  # the checkpoint to continue from (--resume true), or None

    # ---- models: online = base + LoRA; teacher = the same UNet with the LoRA detached; ----------
    # ---- target = the online model itself (no gradient), or an EMA copy of the LoRA -----------
    model = load_sd15(s.sd15, device=rt.device)
    online = model.unet.requires_grad_(not distill).train()  # a teacher being trained: the whole UNet
    online.enable_gradient_checkpointing(s.gradient_checkpointing)
    target = copy.deepcopy(online).requires_grad_(False).eval() if s.ema_decay > 0 else online  # before LoRA hooks
    lora = target_lora = None
    if distill:
        lora = LoRANetwork.create(online, s.lora_rank, s.lora_alpha)
        target_lora = lora
        if s.ema_decay > 0:
            target_lora = LoRANetwork.create(target, s.lora_rank, s.lora_alpha).requires_grad_(False)
            target_lora.load_state_dict(lora.state_dict())

    def teacher(x, t, c):  # one UNet in memory: the base model is the online model minus its LoRA
        lora.detach()
        try:
            return online(x, t, c)
        finally:
            lora.attach()

    # what trains, and what the EMA (if any) follows: the LoRA, or the whole UNet for a teacher
    online_state, target_state = (lora, target_lora) if distill else (online, target)
    trainable = list(online_state.parameters())
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} "
              f"({'LoRA' if distill else 'the whole UNet: diffusion objective'})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=1e-2)

    step = 0
    if state is not None:
        with restoring(out / "checkpoint.pt"):
            online_state.load_state_dict(state["online"])
            target_state.load_state_dict(state["target"])
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        if rt.main:
            print(f"resumed from {out / 'checkpoint.pt'} at step {step}")

    # ---- data: an endless, resumable stream (this rank's share of each global batch) ----------
    sampler = ResumableSampler(len(dataset), s.batch, s.seed, rt.rank, rt.world, start=step * s.grad_accum)
    batches = iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                               num_workers=s.workers))

    # ---- one micro-batch of latent consistency distillation (lcm/distill.py, steps 1-6) --------
    def loss_fn(batch, generators):
        x0 = encode_latents(model.vae, batch["pixels"].to(rt.device), generators)  # [B, 4, h, w]
        if not distill:  # a teacher: the DDPM objective, some captions dropped
            context = model.encode_prompts(drop_captions(batch["captions"], generators, s.caption_dropout))
            with autocast(rt, s.precision):
                return denoising_loss(online, schedule, x0, context, generators, s.loss_weight)
        context = model.encode_prompts(batch["captions"])
        uncontext = model.encode_prompts([""] * len(batch["captions"]))
        w = uniform(generators, s.w_min, s.w_max).to(rt.device)
        with autocast(rt, s.precision):
            return distillation_loss(online, target, teacher, schedule, x0, context, uncontext, w,
                                     s.original_steps, s.loss, generators, s.loss_weight)

    def after_step():  # step 7, when the target is a separate EMA copy (of the LoRA, or of a teacher)
        if s.ema_decay > 0:
            ema_update(target_state, online_state, s.ema_decay)

    def checkpoint(step):
        if not rt.main:
            return
        save_checkpoint(out / "checkpoint.pt", {
            "step": step, "settings": dataclasses.asdict(s), "online": online_state.state_dict(),
            "target": target_state.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()})
        meta = {"settings": dataclasses.asdict(s), "schedule": dataclasses.asdict(schedule), "step": step}
        if distill:
            target_lora.save(out / "lora.safetensors", metadata=meta)
        else:
            save_sd15(out / "model.safetensors", target, model.vae, model.text_encoder, meta)

    def validate(step):
        samples(model, target, s, out / "val", step)
        if s.val_score == "toy":  # the toy world's prompt following, by its pixel detector (toy/health.py)
            from toy.health import validation_record
            return validation_record(dataclasses.replace(model, unet=target), s.objective, 1, s.original_steps)

    train_loop(s, rt, batches, step, optimizer, trainable, loss_fn, after_step, checkpoint, validate,
               "stage 1" if distill else "teacher (diffusion)")
    teardown(rt)
    return {"unet": online, "target": target, "lora": lora, "target_lora": target_lora}


@torch.no_grad()
def samples(model, unet, s: Settings, folder: Path, step: int) -> None:
    """Fixed-seed images of the target as PNGs: LCM at 1, 2 and 4 steps (the LoRA attached), or for a
    teacher DDIM at 4 and 25 steps with guidance 7.5."""
    from PIL import Image
    from lcm.sampler import ddim_timesteps, lcm_timesteps, sample_ddim, sample_lcm
    from pipeline import guided
    folder.mkdir(parents=True, exist_ok=True)
    context, uncontext = model.encode_prompts([s.val_prompt]), model.encode_prompts([""])
    f = 2 ** (len(model.vae.cfg.block_out_channels) - 1)
    schedule = NoiseSchedule(s.beta_schedule)
    was_training = unet.training
    unet.eval()
    for steps in ((1, 2, 4) if s.objective == "consistency" else (4, 25)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, unet.cfg.in_channels, s.size // f, s.size // f, generator=g).to(context.device)
        if s.objective == "consistency":
            latent = sample_lcm(guided(unet, context, None, 1.0), x, schedule, lcm_timesteps(steps, s.original_steps),
                                g, progress=False)
        else:
            latent = sample_ddim(guided(unet, context, uncontext, 7.5), x, schedule, ddim_timesteps(steps),
                                 progress=False)
        image = (model.vae.decode(latent / model.vae.cfg.scaling_factor)[0] / 2 + 0.5).clamp(0, 1)
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().cpu().numpy()).save(
            folder / f"step{step:06d}_{steps}steps.png")
    unet.train(was_training)


if __name__ == "__main__":
    sys.exit(cli.run(main))
