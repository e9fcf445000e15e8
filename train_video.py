"""Stage 2 of AnimateLCM: motion consistency distillation (AnimateLCM sec. 4.2, METHOD.md b.2).

    python train_video.py --sd15 v1-5-pruned-emaonly.safetensors --teacher-motion mm_sd_v15_v2.ckpt \\
        --lora runs/stage1/lora.safetensors --data my_videos/ --out runs/stage2
    python train_video.py ... --resume true                     # continue exactly where it stopped
    python train_video.py ... --overwrite true                  # start the run in --out over
    torchrun --nproc_per_node 4 train_video.py ...              # several GPUs (gradients all-reduced)
    python train_video.py ... --direct true                     # VideoLCM-style one-stage baseline
    python train_video.py --objective diffusion --sd15 ... --data my_videos/   # train a teacher motion module

Teacher: SD1.5 + an AnimateDiff motion module, frozen; classifier-free guidance inside one DDIM step.
Online student: SD1.5 with the stage-1 spatial LoRA merged + the motion modules; only these train.
Target: AnimateLCM's initialisation: the same network *without* the LoRA, moved by EMA of all online
weights, so its spatial weights drift to base + LoRA while early targets stay sane (`--init plain`
starts the target as a copy of the online model instead, for the ablation).
`--direct`: no stage 1: a fresh spatial LoRA and the motion modules train together at a fixed
guidance weight (the non-decoupled baseline of the paper's ablation).
`--objective diffusion`: the AnimateDiff recipe for a teacher motion module: spatial weights frozen,
motion modules (new ones when --teacher-motion is not given) trained with the epsilon-prediction loss.
Outputs in --out: motion_module.safetensors (AnimateDiff layout, from the EMA target; ComfyUI and
diffusers load it), lora.safetensors in --direct mode, checkpoint.pt (full resume state), log.jsonl,
val/ GIFs.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch

import cli
from cli import UserError
from data import ResumableSampler, VideoCaptionDataset, collate
from lcm.distill import DENOISING_WEIGHTS, LOSS_WEIGHTS, denoising_loss, distillation_loss
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from sd15 import StableDiffusion, load_sd15
from run_folder import one_run, restoring, start_run
from training import (autocast, check_batch, check_settings, drop_captions, encode_latents, parse_settings, rng_state,
                      save_checkpoint, set_rng_state, setup, teardown, train_loop, uniform)
from unet.load import add_motion_modules, save_motion_module
from unet.lora import LoRANetwork


@dataclasses.dataclass
class Settings:
    sd15: str = ""                 # SD1.5 or personalized SD1.5 checkpoint (file or diffusers folder)
    teacher_motion: str = ""       # AnimateDiff motion module of the teacher (v2 layout: mid block)
    lora: str = ""                 # stage-1 spatial LoRA (train_image.py); not used with --direct
    data: str = ""                 # folder of videos with captions (see data.py)
    objective: str = "consistency"  # or "diffusion": train a teacher motion module (AnimateDiff recipe)
    caption_dropout: float = 0.1   # --objective diffusion: share of empty captions (for CFG)
    out: str = "runs/stage2"
    resume: bool = False           # continue the run in --out from its checkpoint.pt
    overwrite: bool = False        # delete the run in --out and start again
    direct: bool = False
    init: str = "animatelcm"       # target initialisation: "animatelcm" (no LoRA) or "plain" (copy)
    frames: int = 16
    stride: int = 4
    size: int = 256
    batch: int = 1                 # per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-5
    warmup_steps: int = 100
    lr_anneal_at: int = 0          # from this step on the learning rate is --lr x --lr-anneal-factor (0: never)
    lr_anneal_factor: float = 0.2
    grad_clip: float = 1.0
    ema_decay: float = 0.95        # VideoLCM / AnimateLCM-SVD value (diffusion: 0 = no EMA copy)
    w_min: float = 5.0             # guidance w ~ U[w_min, w_max] in the LCM form (1 + w) c - w u
    w_max: float = 15.0
    direct_w: float = 9.0          # --direct: fixed w, as VideoLCM
    lora_rank: int = 64
    original_steps: int = 50       # the DDIM solver grid: k = 1000 / 50 = 20
    loss: str = "huber"
    loss_weight: str = "uniform"   # lambda_n: uniform or sqrt_snr (loss_weight); diffusion: uniform, sqrt_v or v
    beta_schedule: str = "beta_linear"
    precision: str = "bf16"        # autocast on GPU: bf16, fp16 or fp32; CPU runs fp32
    gradient_checkpointing: bool = True
    save_every: int = 250
    log_every: int = 10
    val_every: int = 250
    val_prompt: str = "a boat sailing on a calm lake"
    val_score: str = ""            # "toy": log prompt accuracy of fixed samples at each validation
    seed: int = 0
    device: str = "auto"
    workers: int = 2


PRODUCTS = ("motion_module.safetensors", "lora.safetensors")  # what a run exports into --out


@one_run
def main(argv=None):
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s, objective=("consistency", "diffusion"), val_score=("", "toy"),
                   loss_weight=LOSS_WEIGHTS if s.objective == "consistency" else DENOISING_WEIGHTS,
                   init=("animatelcm", "plain"))
    distill = s.objective == "consistency"
    if distill and not s.direct and not s.lora:
        raise UserError("--lora (the stage-1 spatial LoRA from train_image.py) is required, or use --direct true")
    if distill and not s.teacher_motion:
        raise UserError("--teacher-motion (the teacher's AnimateDiff motion module) is required for distillation")
    rt = setup(s.seed, s.device)
    out = Path(s.out)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    dataset = VideoCaptionDataset(s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed)
    check_batch(dataset, s, rt)  # bad data is refused before any model loads
    state = start_run(s, rt, PRODUCTS)  # the checkpoint to continue from (--resume true), or None

    # ---- models ------------------------------------------------------------------------------
    teacher = load_sd15(s.sd15, s.teacher_motion or None, device=rt.device)
    if not teacher.unet.cfg.motion_modules:  # a teacher trained from scratch: new (zero-output) modules
        teacher.unet = add_motion_modules(teacher.unet)
    teacher.unet.requires_grad_(False).eval()
    online = copy.deepcopy(teacher.unet) if distill else teacher.unet  # diffusion: no teacher is kept
    # AnimateLCM init: the target starts without the LoRA; a diffusion run keeps an EMA copy if asked
    target = copy.deepcopy(teacher.unet) if distill or s.ema_decay > 0 else online
    lora = target_lora = None
    if distill and s.direct:  # one stage: a fresh LoRA and the motion modules, both trained
        lora = LoRANetwork.create(online, s.lora_rank)
        target_lora = LoRANetwork.create(target, s.lora_rank).requires_grad_(False)
        target_lora.load_state_dict(lora.state_dict())
    elif distill:
        LoRANetwork.load(online, s.lora).merge()  # stage-1 image consistency LoRA, fixed
        if s.init == "plain":
            target.load_state_dict(online.state_dict())
    for name, p in online.named_parameters():
        p.requires_grad_("motion_modules." in name)
    trainable = (list(lora.parameters()) if lora is not None else []) + \
        [p for n, p in online.named_parameters() if "motion_modules." in n]
    online.train().enable_gradient_checkpointing(s.gradient_checkpointing)
    if target is not online:
        target.requires_grad_(False).eval()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision) if rt.device.type == "cuda" else None
    if low is not None:  # frozen weights only ever run under autocast: store them in its precision
        if distill:  # (about 4 GB less at SD1.5 size; the EMA target stays fp32)
            teacher.unet.to(low)
        for p in online.parameters():
            if not p.requires_grad:
                p.data = p.data.to(low)
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} "
              f"(motion modules{' + spatial LoRA' if lora is not None else ''})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=1e-2)

    step = 0
    if state is not None:
        with restoring(out / "checkpoint.pt"):
            online.load_state_dict({**online.state_dict(), **state["online"]})
            target.load_state_dict(state["target"])
            if lora is not None:
                lora.load_state_dict(state["lora"])
                target_lora.load_state_dict(state["target_lora"])
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        if rt.main:
            print(f"resumed from {out / 'checkpoint.pt'} at step {step}")

    # ---- data: an endless, resumable stream of clips (this rank's share of each global batch) -
    sampler = ResumableSampler(len(dataset), s.batch, s.seed, rt.rank, rt.world, start=step * s.grad_accum)
    batches = iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                               num_workers=s.workers))

    # ---- one micro-batch of motion consistency distillation (lcm/distill.py, steps 1-6) --------
    def loss_fn(batch, generators):
        x0 = encode_latents(teacher.vae, batch["pixels"].to(rt.device), generators)  # [B, 4, F, h, w]
        if not distill:  # a teacher motion module: the DDPM objective, some captions dropped
            context = teacher.encode_prompts(drop_captions(batch["captions"], generators, s.caption_dropout))
            with autocast(rt, s.precision):
                return denoising_loss(online, schedule, x0, context, generators, s.loss_weight)
        context = teacher.encode_prompts(batch["captions"])
        uncontext = teacher.encode_prompts([""] * len(batch["captions"]))
        w = torch.full((len(generators),), s.direct_w) if s.direct else uniform(generators, s.w_min, s.w_max)
        with autocast(rt, s.precision):
            return distillation_loss(online, target, teacher.unet, schedule, x0, context, uncontext, w.to(rt.device),
                                     s.original_steps, s.loss, generators, s.loss_weight)

    def after_step():  # step 7: the EMA target, all weights (its spatial part drifts to base + LoRA)
        if target is not online:
            ema_update(target, online, s.ema_decay)
        if lora is not None:
            ema_update(target_lora, lora, s.ema_decay)

    def checkpoint(step):
        if not rt.main:
            return
        save_checkpoint(out / "checkpoint.pt", {
            "step": step, "settings": dataclasses.asdict(s), "optimizer": optimizer.state_dict(),
            "online": {n: p for n, p in online.state_dict().items() if "motion_modules." in n},
            "target": target.state_dict(), "rng": rng_state(),
            **({"lora": lora.state_dict(), "target_lora": target_lora.state_dict()} if lora is not None else {})})
        meta = {"settings": dataclasses.asdict(s), "schedule": dataclasses.asdict(schedule), "step": step}
        save_motion_module(target, out / "motion_module.safetensors", meta)
        if target_lora is not None:
            target_lora.save(out / "lora.safetensors", metadata=meta)

    def validate(step):
        samples(teacher, target, s, out / "val", step)
        if s.val_score == "toy":  # the toy world's prompt following, by its pixel detector (toy/health.py)
            from toy.health import validation_record
            return validation_record(dataclasses.replace(teacher, unet=target), s.objective, s.frames, s.original_steps)

    train_loop(s, rt, batches, step, optimizer, trainable, loss_fn, after_step, checkpoint, validate,
               "stage 2" if distill else "teacher motion (diffusion)")
    teardown(rt)
    return {"online": online, "target": target, "teacher": teacher, "lora": lora}


@torch.no_grad()
def samples(teacher: StableDiffusion, target, s: Settings, folder: Path, step: int) -> None:
    """Fixed-seed videos of the EMA target as GIFs: LCM at 1, 2 and 4 steps, or for a teacher DDIM at
    4 and 25 steps with guidance 7.5."""
    from pipeline import Request, generate
    from video_io import to_uint8, write_video
    model = dataclasses.replace(teacher, unet=target)
    distill = s.objective == "consistency"
    for steps in ((1, 2, 4) if distill else (4, 25)):
        video = generate(model, Request(prompt=s.val_prompt, frames=s.frames, height=s.size, width=s.size,
                                        steps=steps, seed=0, original_steps=s.original_steps,
                                        sampler="lcm" if distill else "ddim", guidance=1.0 if distill else 7.5,
                                        schedule=NoiseSchedule(s.beta_schedule), progress=False))
        write_video(to_uint8(video), folder / f"step{step:06d}_{steps}steps.gif", fps=8)


if __name__ == "__main__":
    sys.exit(cli.run(main))
