"""Stage 3 of AnimateLCM: teacher-free adaptation of adapters to the video consistency model.

    # (a) image-to-video: train the AnimateLCM-I2V image encoder from scratch on video clips,
    #     conditioned on each clip's first frame
    python train_adapter.py --adapter image_encoder --sd15 v1-5.safetensors \\
        --motion runs/stage2/motion_module.safetensors --lora runs/stage1/lora.safetensors \\
        --data my_videos/ --out runs/i2v
    # (b) an existing SD1.5 ControlNet made to work with the video consistency model, by training a
    #     LoRA on it; control images come per frame from a folder of videos named like the data's.
    #     Without --controlnet, a new ControlNet (a copy of the UNet's encoder) trains whole instead.
    python train_adapter.py --adapter controlnet --controlnet control_v11f1p_sd15_depth.pth \\
        --control-data my_depth_videos/ ... --out runs/control
    torchrun --nproc_per_node 4 train_adapter.py ...;  --resume true continues a run, --overwrite true starts it over.

No teacher (AnimateLCM v1 sec. 4.3, known through a review): the target point is the clean latent noised
to t_n with the *same* noise that made the online input at t_{n+k} (the one-sample score estimate:
consistency training). The video consistency model (SD1.5 + stage-1 LoRA merged + stage-2 motion
modules) stays frozen; only the adapter (image encoder, the ControlNet's LoRA, or a new ControlNet)
trains, and the target is its EMA. A ControlNet for the *diffusion* model is trained by train_teacher.py
--train controlnet (the DDPM loss); plug it in as it is, or adapt it here. Why a teacher-free target
works: docs/consistency-distillation.md, section 7.4.
Outputs: i2v_motion_module.safetensors (motion modules + img_encoder, the AnimateLCM-I2V layout),
controlnet_lora.safetensors (kohya names, for `sample.py --controlnet-lora`) or controlnet.safetensors
(ControlNet-1.1 layout); checkpoint.pt; log.jsonl; val/ GIFs.
"""
from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from lcm.distill import LOSSES, distillation_loss, solver_pair, teacher_free_point
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from media.data import VideoCaptionDataset, check_batch, endless_batches
from pipeline import Request, generate
from runtime import cli
from runtime.cli import UserError
from runtime.distributed import autocast, clip_gradients, setup, teardown
from runtime.draws import integers, normal
from runtime.run import TrainingRun, evaluating, one_run, set_learning_rate
from runtime.settings import (AT_LEAST_1, DECAY, FINITE, GRID, NOT_NEGATIVE, OPTIONAL_PATH, PIXELS, SCHEDULE, WEIGHT,
                              TrainSettings, check_settings, flag, one_of, parse_settings)
from sd15 import StableDiffusion, load_sd15
from unet.adapter import ImageEncoder
from unet.controlnet import SD15_HINT_CHANNELS, ControlNet, load_controlnet, save_controlnet
from unet.load import save_motion_module
from unet.lora import LoRANetwork
from unet.model import UNet


@dataclasses.dataclass
class Settings(TrainSettings):
    adapter: str = flag("image_encoder", "image_encoder (I2V) or controlnet", one_of("image_encoder", "controlnet"))
    motion: str = flag("", "the stage-2 (or released AnimateLCM) motion module", OPTIONAL_PATH, may_change=True)
    lora: str = flag("", "the stage-1 spatial LoRA, merged into the frozen UNet", OPTIONAL_PATH, may_change=True)
    controlnet: str = flag("", "a ControlNet-1.1 SD1.5 file to adapt by a LoRA; empty: a new one from the UNet",
                           OPTIONAL_PATH, may_change=True)
    control_data: str = flag("", "--adapter controlnet: control videos, named like the --data videos",
                             OPTIONAL_PATH, may_change=True)
    out: str = flag("runs/adapter", "the run's folder", compared=False)
    frames: int = flag(16, "frames per clip", AT_LEAST_1)
    stride: int = flag(4, "take every n-th frame of a video", AT_LEAST_1)
    size: int = flag(256, "training resolution (pixels, square)", PIXELS)
    lora_rank: int = flag(64, "--adapter controlnet with --controlnet: rank of its LoRA", AT_LEAST_1)
    motion_scale: float = flag(0.8, "I2V: strength of the frame-index signal", FINITE)
    # the method's own settings
    beta_schedule: str = flag("beta_linear", "noise schedule: the video consistency model's (AnimateDiff's linear "
                              "betas)", SCHEDULE)
    original_steps: int = flag(50, "N, the solver grid: k = 1000 / N timesteps per hop (teacher-free, a coarser "
                               "grid carries the clean end's information back in fewer hops)", GRID)
    loss: str = flag("huber", "distance: pseudo-Huber or l2", one_of(*LOSSES))
    ema_decay: float = flag(0.95, "mu of the adapter's EMA target, theta- <- mu theta- + (1 - mu) theta; 0: the "
                            "target is the online adapter (no lag)", DECAY)
    warmup_steps: int = flag(100, "linear learning-rate warm-up, then constant (stage 2's, the LCM scripts' "
                             "schedule: the paper gives none for the adapters)", NOT_NEGATIVE, may_change=True)
    weight_decay: float = flag(1e-2, "AdamW's decoupled weight decay (stage 2's, from AnimateDiff's motion-module "
                               "training)", WEIGHT)


# what a run writes into --out for its users
EXPORTED_FILES = ("i2v_motion_module.safetensors", "controlnet_lora.safetensors", "controlnet.safetensors")


def adapter_models(s: Settings, model: StableDiffusion, controlnet: ControlNet | None, device):
    """Stage 3's models: the frozen video consistency model (`model`) and the adapter that trains on it, the
    online one and its EMA target. `controlnet`: the ControlNet to adapt (--controlnet, loaded) or None.
    Returns (the UNet, online adapter, target adapter, the module that trains and its EMA copy, the
    trainable parameters)."""
    unet = model.unet.requires_grad_(False)
    unet.train().enable_gradient_checkpointing(s.gradient_checkpointing)
    if s.adapter == "image_encoder":
        if unet.img_encoder is None:  # from scratch (zero-initialised: starts as "no image")
            unet.img_encoder = ImageEncoder(unet.cfg.in_channels, unet.cfg.block_out_channels).to(device)
            unet.cfg = dataclasses.replace(unet.cfg, image_encoder=True)
        online_net = unet.img_encoder.requires_grad_(True)
    else:  # a given ControlNet, or a new one as a copy of the UNet's encoder (hints downsample as the VAE does)
        hint = SD15_HINT_CHANNELS[:len(model.vae.cfg.block_out_channels)]
        online_net = controlnet if controlnet is not None else \
            ControlNet.from_unet(unet, hint_channels=hint).to(device)
        online_net.requires_grad_(not s.controlnet).train()  # a new one trains whole (its outputs start at 0)
        online_net.enable_gradient_checkpointing(s.gradient_checkpointing)
    target_net = copy.deepcopy(online_net).requires_grad_(False).eval()
    trained, follower = online_net, target_net  # the module whose weights train, and its EMA copy
    if s.adapter == "controlnet" and s.controlnet:  # an existing ControlNet: adapted through a LoRA on it
        trained = LoRANetwork.create(online_net, s.lora_rank)
        follower = LoRANetwork.create(target_net, s.lora_rank).requires_grad_(False)
        follower.load_state_dict(trained.state_dict())
    trainable = list(trained.parameters())
    return unet, online_net, target_net, trained, follower, trainable


def steering(s: Settings, unet: UNet):
    """steered(adapter, condition): the frozen video consistency model steered by one copy (online or EMA) of
    the adapter, as a model(x, t, context)."""
    def steered(adapter, condition):
        def call(x, t, context):
            if s.adapter == "image_encoder":
                return unet(x, t, context, image_features=adapter(condition, x.shape[2], s.motion_scale))
            down, mid = adapter(x, t, context, condition)
            return unet(x, t, context, down_residuals=down, mid_residual=mid)
        return call
    return steered


@one_run
def main(argv=None):
    # ---- settings, device, data, the run's folder: every problem is refused before any model loads ----
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s)
    if s.adapter == "controlnet" and not s.control_data:
        raise UserError("--adapter controlnet needs --control-data (control videos named like the --data videos)")
    if not s.motion:
        raise UserError("--motion (the video consistency model's motion module, from train_video.py) is required")
    rt = setup(s.seed, s.device)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    # clips (+ their control videos, sampled at the same frames)
    dataset = VideoCaptionDataset(s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed,
                                  control_folder=s.control_data or None)
    check_batch(dataset, s.batch, rt.world)
    run = TrainingRun(s, rt, EXPORTED_FILES, f"stage 3 ({s.adapter})")

    # ---- models: the frozen video consistency model + the trainable adapter (online, EMA target) ------
    model = load_sd15(s.sd15, s.motion, [(s.lora, 1.0)] if s.lora else [], device=rt.device)
    controlnet = load_controlnet(s.controlnet, device=rt.device) if s.adapter == "controlnet" and s.controlnet \
        else None
    unet, online_net, target_net, trained, follower, trainable = adapter_models(s, model, controlnet, rt.device)
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} ({s.adapter})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay)

    steered = steering(s, unet)

    if run.resume_state is not None:  # --resume true: continue bit for bit
        run.restore(optimizer, online=trained, target=follower)
    step = run.start_step
    batches = endless_batches(dataset, s, rt.rank, rt.world, start=step * s.grad_accum)

    def save(step):  # the full resume state, and the EMA adapter in the layout its users load
        run.save_checkpoint(step, optimizer, online=trained, target=follower)
        meta = run.metadata(step, schedule)
        if s.adapter == "image_encoder":  # the AnimateLCM-I2V layout: motion modules + the EMA encoder
            online_encoder, unet.img_encoder = unet.img_encoder, target_net
            save_motion_module(unet, run.out / "i2v_motion_module.safetensors", "animatelcm", meta)
            unet.img_encoder = online_encoder
        elif s.controlnet:  # the LoRA on the given ControlNet
            follower.save(run.out / "controlnet_lora.safetensors", metadata=meta)
        else:
            save_controlnet(target_net, run.out / "controlnet.safetensors", meta)

    clip = dataset[0]  # validation: a fixed clip's first frame (I2V) or its control video

    def validate(step):  # fixed-seed videos steered by the EMA adapter, LCM at 1, 2 and 4 steps
        online_encoder = unet.img_encoder
        if s.adapter == "image_encoder":
            unet.img_encoder, view = target_net, model
            condition = {"image": clip["pixels"][:, 0][None], "motion_scale": s.motion_scale}
        else:
            view, condition = dataclasses.replace(model, controlnet=target_net), {"control": clip["control"][None]}
        with evaluating(unet):
            for steps in (1, 2, 4):
                video = generate(view, Request(prompt=clip["caption"], frames=s.frames, height=s.size, width=s.size,
                                               steps=steps, original_steps=s.original_steps, schedule=schedule,
                                               progress=False, **condition))
                run.write_sample(video[0], f"step{step:06d}_{steps}steps.gif")
        unet.img_encoder = online_encoder

    # ---- the loop: teacher-free consistency training of the adapter (lcm/distill.py, steps 1-7) --------
    with run.catching_signals(save, validate):
        while step < s.steps:
            lr = set_learning_rate(optimizer, step, s)  # linear warm-up, then an optional drop
            for micro in range(s.grad_accum):
                batch, generators = next(batches), run.generators(step, micro)  # one generator per sample
                x0 = model.encode_latents(batch["pixels"].to(rt.device), generators)  # [B, 4, F, h, w]
                context = model.encode_prompts(batch["captions"])
                # I2V: the first frame's latent; ControlNet: the per-frame control images in [0, 1]
                condition = x0[:, :, 0] if s.adapter == "image_encoder" else batch["control"].to(rt.device)
                n = integers(generators, s.original_steps)                       # 1. grid index n ~ U{0..N-1}
                t_start, t_end = solver_pair(n.to(rt.device), s.original_steps)  #    t_{n+k}, t_n = t_{n+k} - k
                noise = normal(generators, x0.shape[1:]).to(x0)                  # 2. eps ~ N(0, I)
                with autocast(rt, s.precision):
                    loss = distillation_loss(                                    # steps 2-6, no teacher
                        online=steered(online_net, condition), target=steered(target_net, condition),
                        target_point=teacher_free_point, schedule=schedule, x0=x0, noise=noise, t_start=t_start,
                        t_end=t_end, context=context, original_steps=s.original_steps, loss=s.loss)
                (loss.mean() / s.grad_accum).backward()
                run.collect_losses(loss, t_start)  # for the log: the loss per timestep
            grad_norm = clip_gradients(trainable, s.grad_clip, rt)  # averaged over processes, then clipped
            loss = run.step_loss()  # the mean over the micro-batches and processes
            run.stop_if_not_finite(step, loss, grad_norm)  # NaN/inf stops here: the saved weights stay finite
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_update(follower, trained, s.ema_decay)                            # step 7
            step += 1
            run.log_save_validate(step, loss, grad_norm, lr)  # the log; a checkpoint and samples when due
    teardown(rt)
    return {"unet": unet, "online": online_net, "target": target_net}


if __name__ == "__main__":
    sys.exit(cli.run(main))
