"""Stage 2 of AnimateLCM: motion consistency distillation (AnimateLCM v3 sec. 3.2, v1 sec. 4.2).

    python train_video.py --sd15 v1-5-pruned-emaonly.safetensors --teacher-motion mm_sd_v15_v2.ckpt \\
        --lora runs/stage1/lora.safetensors --data my_videos/ --out runs/stage2
    python train_video.py ... --resume true                     # continue exactly where it stopped
    python train_video.py ... --overwrite true                  # start the run in --out over
    torchrun --nproc_per_node 4 train_video.py ...              # several GPUs (gradients all-reduced)
    python train_video.py ... --direct true                     # the one-stage (VideoLCM-style) baseline
    python train_video.py ... --init plain                      # the initialisation ablation

Teacher: SD1.5 + an AnimateDiff motion module, frozen; classifier-free guidance with a random weight w
inside one DDIM step. Online student: SD1.5 with the stage-1 spatial LoRA merged + the motion modules;
only the motion modules train. Target: AnimateLCM's initialisation (v1 sec. 4.2, known through a
review), the same network *without* the LoRA, moved by EMA of all online weights, so its spatial weights
drift to base + LoRA while early targets stay sane (`--init plain` starts the target as a copy of the
online model instead).
`--direct`: no stage 1: a fresh spatial LoRA and the motion modules train together on the videos (the
non-decoupled baseline of the paper's ablation; VideoLCM's fixed guidance weight is --w-min = --w-max).
The algorithm, step by step: lcm/distill.py; why it works and what the ablations showed:
docs/consistency-distillation.md, sections 7.1 and 7.3.
Outputs in --out: motion_module.safetensors (the keys of AnimateLCM_sd15_t2v.ckpt, from the EMA
target), lora.safetensors in --direct mode, checkpoint.pt (full resume state), log.jsonl,
val/ GIFs.
"""
from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from lcm.distill import LOSS_WEIGHTS, LOSSES, distillation_loss, solver_pair, teacher_ddim_point
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from media.data import VideoCaptionDataset, check_batch, endless_batches
from pipeline import Request, generate
from runtime import cli
from runtime.cli import UserError
from runtime.distributed import autocast, clip_gradients, low_precision, setup, teardown
from runtime.draws import integers, normal, uniform
from runtime.run import TrainingRun, one_run, set_learning_rate
from runtime.settings import (AT_LEAST_1, DECAY, GRID, NOT_NEGATIVE, OPTIONAL_PATH, PIXELS, POSITIVE, SCHEDULE, WEIGHT,
                              TrainSettings, check_settings, flag, one_of, parse_settings)
from sd15 import load_sd15
from unet.load import save_motion_module
from unet.lora import LoRANetwork
from unet.model import UNet


@dataclasses.dataclass
class Settings(TrainSettings):
    teacher_motion: str = flag("", "AnimateDiff motion module of the teacher (v2 layout: mid block)", OPTIONAL_PATH,
                               may_change=True)
    lora: str = flag("", "the stage-1 spatial LoRA (train_image.py); not used with --direct", OPTIONAL_PATH,
                     may_change=True)
    out: str = flag("runs/stage2", "the run's folder", compared=False)
    direct: bool = flag(False, "one stage: a fresh spatial LoRA trains beside the motion modules")
    init: str = flag("animatelcm", "target initialisation: animatelcm (no LoRA) or plain (a copy)",
                     one_of("animatelcm", "plain"))
    frames: int = flag(16, "frames per clip", AT_LEAST_1)
    stride: int = flag(4, "take every n-th frame of a video", AT_LEAST_1)
    size: int = flag(256, "training resolution (pixels, square)", PIXELS)
    # the method's own settings
    beta_schedule: str = flag("beta_linear", "noise schedule: AnimateDiff's linear betas, with which its motion "
                              "modules were trained and with which AnimateLCM samples", SCHEDULE)
    original_steps: int = flag(50, "N, the DDIM solver grid: k = 1000 / 50 = 20 timesteps per hop", GRID)
    w_min: float = flag(5.0, "guidance w ~ U[w_min, w_max] per sample, in the LCM form (1 + w) c - w u; "
                        "w_min = w_max: a fixed w (VideoLCM: 9)", WEIGHT)
    w_max: float = flag(15.0, "see --w-min", WEIGHT)
    loss: str = flag("huber", "distance: pseudo-Huber or l2", one_of(*LOSSES))
    loss_weight: str = flag("uniform", "lambda_n: uniform or sqrt_snr (lcm/distill.py:loss_weight)",
                            one_of(*LOSS_WEIGHTS))
    ema_decay: float = flag(0.95, "mu of the EMA target, theta- <- mu theta- + (1 - mu) theta (LCM: 0.95); with "
                            "AnimateLCM's initialisation it also carries the target's spatial weights from the "
                            "base to base + LoRA (64%% of the way after 20 steps)", DECAY)
    lr: float = flag(1e-5, "learning rate (AdamW)", POSITIVE, may_change=True)
    warmup_steps: int = flag(100, "linear learning-rate warm-up, then constant (the LCM scripts' schedule)",
                             NOT_NEGATIVE, may_change=True)
    weight_decay: float = flag(1e-2, "AdamW's decoupled weight decay (AnimateDiff's motion-module training: 1e-2)",
                               WEIGHT)
    lora_rank: int = flag(64, "--direct: rank of the new spatial LoRA", AT_LEAST_1)
    val_prompt: str = flag("a boat sailing on a calm lake", "validation prompt", may_change=True)


EXPORTED_FILES = ("motion_module.safetensors", "lora.safetensors")  # what a run writes into --out for its users


def student_and_target(s: Settings, teacher: UNet, stage1_lora, low: torch.dtype | None):
    """Stage 2's models from the teacher's UNet: the online student (with the stage-1 LoRA `stage1_lora`, a
    file or state dict, merged; with --direct a fresh LoRA instead), its EMA target and what trains; frozen
    weights are stored in `low` (runtime/distributed.py:low_precision; None: kept in fp32). Returns (online,
    target, the spatial LoRAs by name, the trainable parameters, the EMA pairs (follower, leader): the target
    after the online model, and with --direct the LoRA's copy after the LoRA)."""
    teacher.requires_grad_(False).eval()
    online = copy.deepcopy(teacher)
    target = copy.deepcopy(teacher)  # AnimateLCM's initialisation: the target starts without the LoRA
    if s.direct:  # one stage: a fresh spatial LoRA trains beside the motion modules (and its EMA copy)
        lora = LoRANetwork.create(online, s.lora_rank)
        target_lora = LoRANetwork.create(target, s.lora_rank).requires_grad_(False)
        target_lora.load_state_dict(lora.state_dict())
        spatial = {"lora": lora, "target_lora": target_lora}
        ema_pairs = [(target, online), (target_lora, lora)]
        trainable = list(lora.parameters())
    else:  # decoupled: the stage-1 image consistency LoRA, merged and fixed
        LoRANetwork.load(online, stage1_lora).merge()
        spatial = {}
        ema_pairs = [(target, online)]
        trainable = []
    if s.init == "plain":  # the initialisation ablation: the target starts as a copy of the online model
        target.load_state_dict(online.state_dict())
    for name, p in online.named_parameters():
        p.requires_grad_("motion_modules." in name)
    trainable += [p for n, p in online.named_parameters() if "motion_modules." in n]
    online.train().enable_gradient_checkpointing(s.gradient_checkpointing)
    target.requires_grad_(False).eval()
    if low is not None:  # frozen weights only ever run under autocast: store them in its precision
        teacher.to(low)  # (about 4 GB less at SD1.5 size; the EMA target stays fp32)
        for p in online.parameters():
            if not p.requires_grad:
                p.data = p.data.to(low)
    return online, target, spatial, trainable, ema_pairs


@one_run
def main(argv=None, score=None):
    """`score(model, schedule) -> dict`, if given, is logged at each validation (the toy world passes its
    prompt-following measure: toy/health.py)."""
    # ---- settings, device, data, the run's folder: every problem is refused before any model loads ----
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s)
    if not s.direct and not s.lora:
        raise UserError("--lora (the stage-1 spatial LoRA from train_image.py) is required, or use --direct true")
    if not s.teacher_motion:
        raise UserError("--teacher-motion (the teacher's AnimateDiff motion module) is required for distillation")
    rt = setup(s.seed, s.device)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    dataset = VideoCaptionDataset(s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed)
    check_batch(dataset, s.batch, rt.world)
    run = TrainingRun(s, rt, EXPORTED_FILES, "stage 2")  # run.resume_state: the checkpoint to continue, or None

    # ---- models: teacher (frozen), online student, EMA target; the ablations (--direct, --init) are chosen
    # here, once: nothing below asks which variant runs ----------------------------------------------------
    teacher = load_sd15(s.sd15, s.teacher_motion, device=rt.device)
    online, target, spatial, trainable, ema_pairs = student_and_target(s, teacher.unet, s.lora,
                                                                       low_precision(rt, s.precision))
    exported_loras = {"lora.safetensors": spatial["target_lora"]} if s.direct else {}  # --direct: its EMA LoRA
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} "
              f"(motion modules{' + spatial LoRA' if s.direct else ''})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay)
    if run.resume_state is not None:  # --resume true: continue bit for bit
        run.restore(optimizer, online=online, target=target, **spatial)
    step = run.start_step
    batches = endless_batches(dataset, s, rt.rank, rt.world, start=step * s.grad_accum)

    def save(step):  # the full resume state, and the target's motion modules as an AnimateLCM file
        motion = {n: p for n, p in online.state_dict().items() if "motion_modules." in n}  # the rest is frozen
        run.save_checkpoint(step, optimizer, online=motion, target=target, **spatial)
        save_motion_module(target, run.out / "motion_module.safetensors", "animatelcm", run.metadata(step, schedule))
        for name, lora in exported_loras.items():
            lora.save(run.out / name, metadata=run.metadata(step, schedule))

    def validate(step):  # fixed-seed videos of the EMA target, LCM at 1, 2 and 4 steps
        view = dataclasses.replace(teacher, unet=target)
        for steps in (1, 2, 4):
            video = generate(view, Request(prompt=s.val_prompt, frames=s.frames, height=s.size, width=s.size,
                                           steps=steps, schedule=schedule, original_steps=s.original_steps,
                                           progress=False))
            run.write_sample(video[0], f"step{step:06d}_{steps}steps.gif")
        return score(view, schedule) if score else None

    # ---- the loop: motion consistency distillation (lcm/distill.py, steps 1-7) ----------------------
    with run.catching_signals(save, validate):
        while step < s.steps:
            lr = set_learning_rate(optimizer, step, s)  # linear warm-up, then an optional drop
            for micro in range(s.grad_accum):
                batch, generators = next(batches), run.generators(step, micro)  # one generator per sample
                x0 = teacher.encode_latents(batch["pixels"].to(rt.device), generators)  # [B, 4, F, h, w]
                context = teacher.encode_prompts(batch["captions"])
                uncontext = teacher.encode_prompts([""] * len(batch["captions"]))
                w = uniform(generators, s.w_min, s.w_max).to(rt.device)          # guidance w ~ U[w_min, w_max]
                n = integers(generators, s.original_steps)                       # 1. grid index n ~ U{0..N-1}
                t_start, t_end = solver_pair(n.to(rt.device), s.original_steps)  #    t_{n+k}, t_n = t_{n+k} - k
                noise = normal(generators, x0.shape[1:]).to(x0)                  # 2. eps ~ N(0, I)
                with autocast(rt, s.precision):
                    loss = distillation_loss(                                    # steps 2-6
                        online=online, target=target, target_point=teacher_ddim_point(teacher.unet, uncontext, w),
                        schedule=schedule, x0=x0, noise=noise, t_start=t_start, t_end=t_end, context=context,
                        original_steps=s.original_steps, loss=s.loss, weighting=s.loss_weight)
                (loss.mean() / s.grad_accum).backward()
                run.collect_losses(loss, t_start)  # for the log: the loss per timestep
            grad_norm = clip_gradients(trainable, s.grad_clip, rt)  # averaged over processes, then clipped
            loss = run.step_loss()  # the mean over the micro-batches and processes
            run.stop_if_not_finite(step, loss, grad_norm)  # NaN/inf stops here: the saved weights stay finite
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for follower, leader in ema_pairs:  # step 7, theta- <- mu theta- + (1 - mu) theta, all weights:
                ema_update(follower, leader, s.ema_decay)  # the target's spatial part drifts to base + LoRA
            step += 1
            run.log_save_validate(step, loss, grad_norm, lr)  # the log; a checkpoint and samples when due
    teardown(rt)
    return {"online": online, "target": target, "teacher": teacher, "lora": spatial.get("lora")}


if __name__ == "__main__":
    sys.exit(cli.run(main))
