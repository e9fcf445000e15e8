"""The teachers: diffusion models trained with the denoising (DDPM) loss, as SD1.5, AnimateDiff and
ControlNet were. AnimateLCM distils from such models; the toy world trains its own with this script.

    # the image model, whole, on captioned images (from scratch or a fine-tune); writes model.safetensors
    python train_teacher.py --train unet --sd15 start.safetensors --data my_images/ --out runs/teacher_image
    # a style LoRA on the frozen image model, on captioned images (a personalization, the way people make
    # them); writes lora.safetensors (kohya), to load with any SD1.5 model at a scale of your choice
    python train_teacher.py --train lora --sd15 v1-5-pruned-emaonly.safetensors --data my_style/ --out runs/style
    # motion modules on captioned videos, the image model frozen (AnimateDiff's recipe); new modules
    # without --motion; writes motion_module.safetensors
    python train_teacher.py --train motion --sd15 model.safetensors --data my_videos/ --out runs/teacher_motion
    # a new ControlNet for the diffusion model (SD1.5 + motion module, frozen), on videos and their control
    # videos; then plug it into the consistency model, or adapt it with train_adapter.py
    python train_teacher.py --train controlnet --sd15 ... --motion mm_sd_v15_v2.ckpt --data my_videos/ \\
        --control-data my_depth_videos/ --out runs/control_ddpm
    torchrun --nproc_per_node 4 train_teacher.py ...;  --resume true continues a run, --overwrite true starts it over.

One step: t ~ U{0..T-1}, x_t = alpha_t x0 + sigma_t eps, loss = lambda(t) ||eps_theta(x_t, c, t) - eps||^2
(lcm/denoise.py), with a share of captions replaced by "" so that classifier-free guidance works.
Outputs in --out: model.safetensors (SD1.5 single-file layout), lora.safetensors (kohya), motion_module.safetensors
(AnimateDiff v2 layout, position tables included) or controlnet.safetensors (ControlNet-1.1 layout), from the EMA
weights with --ema-decay > 0;
checkpoint.pt; log.jsonl; val/ samples (DDIM, 4 and 25 steps, guidance 7.5).
"""
from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from lcm.denoise import DENOISING_WEIGHTS, denoising_loss, drop_captions
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from media.data import ImageCaptionDataset, VideoCaptionDataset, check_batch, endless_batches
from pipeline import Request, generate
from runtime import cli
from runtime.cli import UserError
from runtime.distributed import autocast, clip_gradients, low_precision, setup, teardown
from runtime.draws import coin_flips, integers, normal
from runtime.run import TrainingRun, evaluating, one_run, set_learning_rate
from runtime.settings import (AT_LEAST_1, DECAY, NOT_NEGATIVE, OPTIONAL_PATH, POSITIVE, SCHEDULE, SHARE, WEIGHT,
                              TrainSettings, check_settings, flag, one_of, parse_settings)
from sd15 import StableDiffusion, load_sd15, save_sd15
from unet.controlnet import SD15_HINT_CHANNELS, ControlNet, save_controlnet
from unet.load import add_motion_modules, save_motion_module
from unet.lora import LoRANetwork
from unet.model import UNet


@dataclasses.dataclass
class Settings(TrainSettings):
    train: str = flag("unet", "what learns: unet (the image model, on images), lora (a LoRA on it, on images), "
                      "motion (motion modules, on videos) or controlnet (a new ControlNet, on videos and control "
                      "videos)", one_of("unet", "lora", "motion", "controlnet"))
    motion: str = flag("", "a motion module: --train motion continues it (none: new modules); --train "
                       "controlnet: the frozen video model's", OPTIONAL_PATH, may_change=True)
    control_data: str = flag("", "--train controlnet: control videos, named like the --data videos", OPTIONAL_PATH,
                             may_change=True)
    out: str = flag("runs/teacher", "the run's folder", compared=False)
    frames: int = flag(16, "frames per clip (--train motion or controlnet)", AT_LEAST_1)
    stride: int = flag(4, "take every n-th frame of a video", AT_LEAST_1)
    # the method's own settings
    beta_schedule: str = flag("beta_linear", "noise schedule of the forward process (AnimateDiff's linear betas; "
                              "SD1.5 itself was trained with sqrt_beta_linear)", SCHEDULE)
    caption_dropout: float = flag(0.1, "share of captions replaced by '' (for classifier-free guidance)", SHARE)
    loss_weight: str = flag("uniform", "lambda(t): uniform (DDPM), v or sqrt_v (lcm/denoise.py:denoising_weight)",
                            one_of(*DENOISING_WEIGHTS))
    ema_decay: float = flag(0.0, "0: export the trained weights; else an EMA copy of them (e.g. 0.995), as "
                            "diffusion models are usually released", DECAY)
    warmup_steps: int = flag(100, "linear learning-rate warm-up", NOT_NEGATIVE, may_change=True)
    weight_decay: float = flag(1e-2, "AdamW's decoupled weight decay (AnimateDiff's training config: 1e-2)", WEIGHT)
    lora_rank: int = flag(16, "--train lora: its rank", AT_LEAST_1)
    lora_alpha: float = flag(16.0, "--train lora: its alpha (scale alpha / rank)", POSITIVE)
    val_prompt: str = flag("a boat sailing on a calm lake", "validation prompt (--train unet, lora or motion)",
                           may_change=True)


# what a run writes into --out for its users
EXPORTED_FILES = ("model.safetensors", "lora.safetensors", "motion_module.safetensors", "controlnet.safetensors")
IMAGES = ("unet", "lora")  # the parts that learn from images


def learners(s: Settings, model: StableDiffusion, device, low: torch.dtype | None):
    """What learns (online), its EMA copy (target, or the online model itself) and the trainable parameters,
    on `model` (given new motion modules for --train motion when it has none); with --train motion the
    frozen weights are stored in `low` (runtime/distributed.py:low_precision; None: kept in fp32)."""
    if s.train == "motion" and not model.unet.cfg.motion_modules:  # new modules, their outputs at zero
        model.unet = add_motion_modules(model.unet)
    unet = model.unet
    if s.train == "unet":  # the whole image model learns
        online = unet.requires_grad_(True).train()
        online.enable_gradient_checkpointing(s.gradient_checkpointing)
    elif s.train == "lora":  # a LoRA learns; the image model stays as it is
        unet.requires_grad_(False).train().enable_gradient_checkpointing(s.gradient_checkpointing)
        online = LoRANetwork.create(unet, s.lora_rank, s.lora_alpha)
    elif s.train == "motion":  # the motion modules learn; the spatial layers stay as they are
        online = unet.requires_grad_(False).eval()
        for name, p in online.named_parameters():
            p.requires_grad_("motion_modules." in name)
    else:  # a new ControlNet learns to steer the frozen video model: a copy of its encoder, zero convs at zero
        unet.requires_grad_(False).train().enable_gradient_checkpointing(s.gradient_checkpointing)
        hint = SD15_HINT_CHANNELS[:len(model.vae.cfg.block_out_channels)]  # downsamples as the VAE does
        online = ControlNet.from_unet(unet, hint_channels=hint).to(device).requires_grad_(True).train()
        online.enable_gradient_checkpointing(s.gradient_checkpointing)
    target = copy.deepcopy(online).requires_grad_(False).eval() if s.ema_decay > 0 else online
    if s.train == "motion":
        online.train().enable_gradient_checkpointing(s.gradient_checkpointing)
        for p in online.parameters():  # frozen weights only ever run under autocast: store them in its precision
            if low is not None and not p.requires_grad:
                p.data = p.data.to(low)
    trainable = [p for p in online.parameters() if p.requires_grad]
    return online, target, trainable


def denoising(s: Settings, unet: UNet):
    """denoiser(net, control) -> eps_theta(x, t, c): the network itself (a LoRA: the UNet it is attached to),
    or the frozen video model steered by a ControlNet."""
    def denoiser(net, control):
        if s.train == "lora":
            return unet
        if s.train != "controlnet":
            return net

        def steered(x, t, context):
            down, mid = net(x, t, context, control)
            return unet(x, t, context, down_residuals=down, mid_residual=mid)
        return steered
    return denoiser


@one_run
def main(argv=None, score=None):
    """`score(model, schedule) -> dict`, if given, is logged at each validation (the toy world passes its
    prompt-following measure: toy/health.py)."""
    # ---- settings, device, data, the run's folder: every problem is refused before any model loads ----
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s)
    if s.train == "controlnet" and not (s.motion and s.control_data):
        raise UserError("--train controlnet needs --motion (the frozen video model's motion module) and "
                        "--control-data (control videos named like the --data videos)")
    if s.train == "lora" and s.ema_decay > 0:
        raise UserError("--train lora trains without an EMA copy: pass --ema-decay 0")
    rt = setup(s.seed, s.device)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    dataset = ImageCaptionDataset(s.data, size=s.size) if s.train in IMAGES else VideoCaptionDataset(
        s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed, control_folder=s.control_data or None)
    check_batch(dataset, s.batch, rt.world)
    run = TrainingRun(s, rt, EXPORTED_FILES, f"teacher ({s.train})")

    # ---- models: what learns (online), its EMA copy (target, or the online model itself), what is frozen ---
    model = load_sd15(s.sd15, s.motion or None, device=rt.device)
    online, target, trainable = learners(s, model, rt.device, low_precision(rt, s.precision))
    unet = model.unet
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} ({s.train})")

    denoiser = denoising(s, unet)

    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay)
    if run.resume_state is not None:  # --resume true: continue bit for bit
        run.restore(optimizer, online=online, target=target)
    step = run.start_step
    batches = endless_batches(dataset, s, rt.rank, rt.world, start=step * s.grad_accum)

    def save(step):  # the full resume state, and what learnt in the layout its users load
        learnt = {n: p for n, p in online.state_dict().items() if s.train != "motion" or "motion_modules." in n}
        run.save_checkpoint(step, optimizer, online=learnt, target=target)
        meta = run.metadata(step, schedule)
        if s.train == "unet":
            save_sd15(run.out / "model.safetensors", target, model.vae, model.text_encoder, meta)
        elif s.train == "lora":
            target.save(run.out / "lora.safetensors", metadata=meta)
        elif s.train == "motion":
            save_motion_module(target, run.out / "motion_module.safetensors", "animatediff", meta)
        else:
            save_controlnet(target, run.out / "controlnet.safetensors", meta)

    clip = dataset[0] if s.train == "controlnet" else None  # validation: a fixed clip's control video

    def validate(step):  # fixed-seed samples of the EMA weights: DDIM at 4 and 25 steps, guidance 7.5
        view, condition = dataclasses.replace(model, unet=unet if s.train == "lora" else target), {}
        if s.train == "controlnet":
            view, condition = dataclasses.replace(model, controlnet=target), {"control": clip["control"][None]}
        frames, suffix = (1, "png") if s.train in IMAGES else (s.frames, "gif")
        with evaluating(unet, target):
            for steps in (4, 25):
                video = generate(view, Request(prompt=clip["caption"] if clip else s.val_prompt, frames=frames,
                                               height=s.size, width=s.size, steps=steps, sampler="ddim", guidance=7.5,
                                               schedule=schedule, progress=False, **condition))
                run.write_sample(video[0], f"step{step:06d}_{steps}steps.{suffix}")
            return score(view, schedule) if score else None

    # ---- the loop: the denoising objective (lcm/denoise.py) -----------------------------------------
    with run.catching_signals(save, validate):
        while step < s.steps:
            lr = set_learning_rate(optimizer, step, s)  # linear warm-up, then an optional drop
            for micro in range(s.grad_accum):
                batch, generators = next(batches), run.generators(step, micro)  # one generator per sample
                x0 = model.encode_latents(batch["pixels"].to(rt.device), generators)  # [B, 4, (F,) h, w]
                captions = batch["captions"]
                if s.caption_dropout > 0:  # "" for a share of them: the unconditional model guidance needs
                    captions = drop_captions(captions, coin_flips(generators, s.caption_dropout))
                control = batch["control"].to(rt.device) if s.train == "controlnet" else None
                t = integers(generators, schedule.steps).to(rt.device)           # t ~ U{0..T-1}
                noise = normal(generators, x0.shape[1:]).to(x0)                  # eps ~ N(0, I)
                with autocast(rt, s.precision):
                    loss = denoising_loss(denoiser(online, control), schedule, x0, model.encode_prompts(captions),
                                          noise, t, s.loss_weight)
                (loss.mean() / s.grad_accum).backward()
                run.collect_losses(loss, t)  # for the log: the loss per timestep
            grad_norm = clip_gradients(trainable, s.grad_clip, rt)  # averaged over processes, then clipped
            loss = run.step_loss()  # the mean over the micro-batches and processes
            run.stop_if_not_finite(step, loss, grad_norm)  # NaN/inf stops here: the saved weights stay finite
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if target is not online:
                ema_update(target, online, s.ema_decay)
            step += 1
            run.log_save_validate(step, loss, grad_norm, lr)  # the log; a checkpoint and samples when due
    teardown(rt)
    return {"online": online, "target": target, "model": model}


if __name__ == "__main__":
    sys.exit(cli.run(main))
