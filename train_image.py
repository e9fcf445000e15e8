"""Stage 1 of AnimateLCM: image consistency distillation into a spatial LoRA (LCM-LoRA style).

    python train_image.py --sd15 v1-5-pruned-emaonly.safetensors --data my_images/ --out runs/stage1
    python train_image.py ... --resume true       # continue the run in --out (--overwrite true: start it over)
    torchrun --nproc_per_node 4 train_image.py ...

Teacher: SD1.5 (or any personalized SD1.5 checkpoint), frozen; classifier-free guidance with a random
weight w inside one DDIM step on the 50-point solver grid. Online student: the same UNet with a
trainable rank-64 LoRA on the LCM-LoRA layers. Target: the student's own current weights without
gradient (the LCM-LoRA scripts keep no separate EMA copy), or an EMA copy of the LoRA with
--ema-decay > 0. The algorithm, step by step: lcm/distill.py; why it works:
docs/consistency-distillation.md, sections 2-5 and 7.2.
Outputs in --out: lora.safetensors (kohya format, the keys of AnimateLCM's LoRA at rank 64; the
schedule and settings in its metadata), checkpoint.pt (full resume state), log.jsonl, val/ PNGs.
"""
from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from lcm.distill import LOSS_WEIGHTS, LOSSES, distillation_loss, solver_pair, teacher_ddim_point
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from media.data import ImageCaptionDataset, check_batch, endless_batches
from pipeline import Request, generate
from runtime import cli
from runtime.distributed import autocast, clip_gradients, setup, teardown
from runtime.draws import integers, normal, uniform
from runtime.run import TrainingRun, evaluating, one_run, set_learning_rate
from runtime.settings import (AT_LEAST_1, DECAY, GRID, NOT_NEGATIVE, POSITIVE, SCHEDULE, WEIGHT, TrainSettings,
                              check_settings, flag, one_of, parse_settings)
from sd15 import load_sd15
from unet.lora import LoRANetwork
from unet.model import UNet


@dataclasses.dataclass
class Settings(TrainSettings):
    out: str = flag("runs/stage1", "the run's folder", compared=False)
    batch: int = flag(4, "images per process and micro-batch", AT_LEAST_1, may_change=True)
    steps: int = flag(2000, "optimizer steps", AT_LEAST_1, may_change=True)
    lora_rank: int = flag(64, "rank of the spatial LoRA", AT_LEAST_1)
    lora_alpha: float = flag(8.0, "LoRA alpha: alpha/rank = 1/8, as the released AnimateLCM and LCM-LoRA files",
                             POSITIVE)
    # the method's own settings
    beta_schedule: str = flag("beta_linear", "noise schedule: that of the video model the LoRA will serve "
                              "(AnimateDiff's and AnimateLCM's linear betas); sqrt_beta_linear, SD1.5's own "
                              "training schedule, for an image-only LCM-LoRA (docs/consistency-distillation.md, "
                              "section 7.2)", SCHEDULE)
    original_steps: int = flag(50, "N, the DDIM solver grid: k = 1000 / 50 = 20 timesteps per hop", GRID)
    w_min: float = flag(5.0, "guidance w ~ U[w_min, w_max] per sample, in the LCM form (1 + w) c - w u", WEIGHT)
    w_max: float = flag(15.0, "see --w-min", WEIGHT)
    loss: str = flag("huber", "distance: pseudo-Huber or l2", one_of(*LOSSES))
    loss_weight: str = flag("uniform", "lambda_n: uniform or sqrt_snr (lcm/distill.py:loss_weight)",
                            one_of(*LOSS_WEIGHTS))
    ema_decay: float = flag(0.0, "mu of the target: 0, the target is the online model itself without gradient "
                            "(LCM-LoRA's scripts); above 0, an EMA copy of the LoRA", DECAY)
    warmup_steps: int = flag(100, "linear learning-rate warm-up, then constant (the LCM scripts' schedule)",
                             NOT_NEGATIVE, may_change=True)
    weight_decay: float = flag(1e-2, "AdamW's decoupled weight decay (the diffusers LCM-LoRA script's default)",
                               WEIGHT)
    val_prompt: str = flag("a photo of a red apple on a wooden table", "validation prompt", may_change=True)


EXPORTED_FILES = ("lora.safetensors",)  # what a run writes into --out for its users


def student_and_target(s: Settings, unet: UNet):
    """Stage 1's models on one UNet: the online student (the UNet + a trainable LoRA), its target (the same
    network without gradient, or an EMA copy of the LoRA with --ema-decay) and the teacher (the UNet with
    the LoRA detached). Returns (online, target, lora, target_lora, teacher)."""
    online = unet.requires_grad_(False).train()
    online.enable_gradient_checkpointing(s.gradient_checkpointing)
    target = copy.deepcopy(online).eval() if s.ema_decay > 0 else online  # copied before the LoRA hooks
    lora = target_lora = LoRANetwork.create(online, s.lora_rank, s.lora_alpha)
    if s.ema_decay > 0:
        target_lora = LoRANetwork.create(target, s.lora_rank, s.lora_alpha).requires_grad_(False)
        target_lora.load_state_dict(lora.state_dict())

    def teacher(x, t, c):  # one UNet in memory: the base model is the online model minus its LoRA
        lora.detach()
        try:
            return online(x, t, c)
        finally:
            lora.attach()

    return online, target, lora, target_lora, teacher


@one_run
def main(argv=None, score=None):
    """`score(model, schedule) -> dict`, if given, is logged at each validation (the toy world passes its
    prompt-following measure: toy/health.py)."""
    # ---- settings, device, data, the run's folder: every problem is refused before any model loads ----
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s)
    rt = setup(s.seed, s.device)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    dataset = ImageCaptionDataset(s.data, size=s.size)
    check_batch(dataset, s.batch, rt.world)
    run = TrainingRun(s, rt, EXPORTED_FILES, "stage 1")  # run.resume_state: the checkpoint to continue, or None

    # ---- models: online = base + LoRA (trained); teacher = the same UNet with the LoRA detached; --------
    # ---- target = the online model itself without gradient, or an EMA copy of the LoRA ------------------
    model = load_sd15(s.sd15, device=rt.device)
    online, target, lora, target_lora, teacher = student_and_target(s, model.unet)
    trainable = list(lora.parameters())
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} (LoRA)")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay)
    if run.resume_state is not None:  # --resume true: continue bit for bit
        run.restore(optimizer, online=lora, target=target_lora)
    step = run.start_step
    batches = endless_batches(dataset, s, rt.rank, rt.world, start=step * s.grad_accum)

    def save(step):  # the full resume state, and the LoRA file (kohya names, the EMA copy if any)
        run.save_checkpoint(step, optimizer, online=lora, target=target_lora)
        target_lora.save(run.out / "lora.safetensors", metadata=run.metadata(step, schedule))

    def validate(step):  # fixed-seed images of the target, LCM at 1, 2 and 4 steps
        view = dataclasses.replace(model, unet=target)
        with evaluating(target):
            for steps in (1, 2, 4):
                image = generate(view, Request(prompt=s.val_prompt, frames=1, height=s.size, width=s.size,
                                               steps=steps, schedule=schedule, original_steps=s.original_steps,
                                               progress=False))
                run.write_sample(image[0], f"step{step:06d}_{steps}steps.png")
            return score(view, schedule) if score else None

    # ---- the loop: latent consistency distillation (lcm/distill.py, steps 1-7) ----------------------
    with run.catching_signals(save, validate):
        while step < s.steps:
            lr = set_learning_rate(optimizer, step, s)  # linear warm-up, then an optional drop
            for micro in range(s.grad_accum):
                batch, generators = next(batches), run.generators(step, micro)  # one generator per sample
                x0 = model.encode_latents(batch["pixels"].to(rt.device), generators)  # [B, 4, h, w]
                context = model.encode_prompts(batch["captions"])
                uncontext = model.encode_prompts([""] * len(batch["captions"]))
                w = uniform(generators, s.w_min, s.w_max).to(rt.device)          # guidance w ~ U[w_min, w_max]
                n = integers(generators, s.original_steps)                       # 1. grid index n ~ U{0..N-1}
                t_start, t_end = solver_pair(n.to(rt.device), s.original_steps)  #    t_{n+k}, t_n = t_{n+k} - k
                noise = normal(generators, x0.shape[1:]).to(x0)                  # 2. eps ~ N(0, I)
                with autocast(rt, s.precision):
                    loss = distillation_loss(                                    # steps 2-6
                        online=online, target=target, target_point=teacher_ddim_point(teacher, uncontext, w),
                        schedule=schedule, x0=x0, noise=noise, t_start=t_start, t_end=t_end, context=context,
                        original_steps=s.original_steps, loss=s.loss, weighting=s.loss_weight)
                (loss.mean() / s.grad_accum).backward()
                run.collect_losses(loss, t_start)  # for the log: the loss per timestep
            grad_norm = clip_gradients(trainable, s.grad_clip, rt)  # averaged over processes, then clipped
            loss = run.step_loss()  # the mean over the micro-batches and processes
            run.stop_if_not_finite(step, loss, grad_norm)  # NaN/inf stops here: the saved weights stay finite
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if s.ema_decay > 0:
                ema_update(target_lora, lora, s.ema_decay)                        # step 7
            step += 1
            run.log_save_validate(step, loss, grad_norm, lr)  # the log; a checkpoint and samples when due
    teardown(rt)
    return {"unet": online, "target": target, "lora": lora, "target_lora": target_lora}


if __name__ == "__main__":
    sys.exit(cli.run(main))
