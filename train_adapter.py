"""Stage 3 of AnimateLCM: teacher-free adaptation of adapters (AnimateLCM sec. 4.3, METHOD.md c).

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
    # (c) --objective diffusion: a new adapter trained for the *diffusion* model (SD1.5 + a teacher motion
    #     module, no LCM LoRA) with the DDPM loss, as off-the-shelf ControlNets are trained; then plug it
    #     into the consistency model as it is, or adapt it with (b)
    python train_adapter.py --objective diffusion --adapter controlnet --sd15 v1-5.safetensors \\
        --motion animatediff_v2.ckpt --data my_videos/ --control-data my_depth_videos/ --out runs/control_ddpm
    torchrun --nproc_per_node 4 train_adapter.py ...;  --resume true continues a run, --overwrite true starts it over.

No teacher (the default, `--objective consistency`): the target point is the clean latent noised to
t_n with the *same* noise that made the online input at t_{n+k} (the one-sample score estimate, i.e.
consistency training). The video consistency model (SD1.5 + stage-1 LoRA merged + stage-2 motion
modules) stays frozen; only the adapter (image encoder, the ControlNet's LoRA, or a new ControlNet)
trains, and the target is its EMA. With `--objective diffusion` the frozen model is a diffusion model
and the adapter learns to predict its noise: no bootstrapping from a target, every noise level
supervised directly.
Outputs: i2v_motion_module.safetensors (motion modules + img_encoder, the AnimateLCM-I2V layout),
controlnet_lora.safetensors (kohya names, for `sample.py --controlnet-lora`) or controlnet.safetensors
(ControlNet-1.1 layout); checkpoint.pt; log.jsonl; val/ GIFs.
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
from lcm.distill import denoising_loss, distillation_loss
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from sd15 import load_sd15
from run_folder import one_run, restoring, start_run
from training import (autocast, check_batch, check_settings, encode_latents, parse_settings, rng_state,
                      save_checkpoint, set_rng_state, setup, teardown, train_loop)
from unet.adapter import ImageEncoder
from unet.load import save_motion_module
from unet.controlnet import controlnet_hints, controlnet_state_to_ldm
from unet.lora import LoRANetwork
from weights import HINTS_KEY, save_safetensors

ADAPTERS = ("image_encoder", "controlnet")


@dataclasses.dataclass
class Settings:
    adapter: str = "image_encoder"  # "image_encoder" (I2V) or "controlnet"
    objective: str = "consistency"  # teacher-free consistency training, or "diffusion": the DDPM loss
    sd15: str = ""
    motion: str = ""               # the stage-2 (or released AnimateLCM) motion module
    lora: str = ""                 # the stage-1 spatial LoRA, merged into the frozen UNet
    controlnet: str = ""           # ControlNet-1.1 SD1.5 file; empty: initialised from the UNet
    data: str = ""
    control_data: str = ""         # --adapter controlnet: control videos, same names as --data
    out: str = "runs/adapter"
    resume: bool = False           # continue the run in --out from its checkpoint.pt
    overwrite: bool = False        # delete the run in --out and start again
    frames: int = 16
    stride: int = 4
    size: int = 256
    batch: int = 1                 # per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-4
    warmup_steps: int = 100
    lr_anneal_at: int = 0          # from this step on the learning rate is --lr x --lr-anneal-factor (0: never)
    lr_anneal_factor: float = 0.2
    grad_clip: float = 1.0
    ema_decay: float = 0.95
    lora_rank: int = 64            # --adapter controlnet: the LoRA on the ControlNet
    motion_scale: float = 0.8      # I2V: strength of the frame-index signal
    original_steps: int = 50
    loss: str = "huber"
    beta_schedule: str = "beta_linear"
    precision: str = "bf16"
    gradient_checkpointing: bool = True
    save_every: int = 250
    log_every: int = 10
    val_every: int = 250
    seed: int = 0
    device: str = "auto"
    workers: int = 2


# what a run exports into --out
PRODUCTS = ("i2v_motion_module.safetensors", "controlnet_lora.safetensors", "controlnet.safetensors")


@one_run
def main(argv=None):
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    check_settings(s, adapter=ADAPTERS, objective=("consistency", "diffusion"))
    if s.adapter == "controlnet" and not s.control_data:
        raise UserError("--adapter controlnet needs --control-data (control videos named like the --data videos)")
    if not s.motion:
        raise UserError("--motion (the video consistency model's motion module, from train_video.py) is required")
    rt = setup(s.seed, s.device)
    out = Path(s.out)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")
    # clips (+ their control videos, sampled at the same frames); bad data is refused before any model loads
    dataset = VideoCaptionDataset(s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed,
                                  control_folder=s.control_data or None)
    check_batch(dataset, s, rt)
    state = start_run(s, rt, PRODUCTS)  # the checkpoint to continue from (--resume true), or None

    # ---- models: the frozen video consistency model + the trainable adapter (online, EMA) -----
    model = load_sd15(s.sd15, s.motion, [(s.lora, 1.0)] if s.lora else [], device=rt.device)
    unet = model.unet.requires_grad_(False)
    unet.train().enable_gradient_checkpointing(s.gradient_checkpointing)
    if s.adapter == "image_encoder":
        if unet.img_encoder is None:  # from scratch (zero-initialised: starts as "no image")
            unet.img_encoder = ImageEncoder(unet.cfg.in_channels, unet.cfg.block_out_channels).to(rt.device)
            unet.cfg = dataclasses.replace(unet.cfg, image_encoder=True)
        online_net = unet.img_encoder.requires_grad_(True)
        target_net = copy.deepcopy(online_net).requires_grad_(False).eval()
        online_state, target_state = online_net, target_net  # what trains, what the EMA follows
    else:
        from unet.controlnet import SD15_HINT_CHANNELS, ControlNet, load_controlnet
        # a new ControlNet starts as a copy of the UNet's encoder; its hint encoder downsamples as the VAE does
        hint = SD15_HINT_CHANNELS[:len(model.vae.cfg.block_out_channels)]
        online_net = load_controlnet(s.controlnet, device=rt.device) if s.controlnet else \
            ControlNet.from_unet(unet, hint_channels=hint).to(rt.device)
        online_net.requires_grad_(not s.controlnet).train()  # a new one trains whole (its outputs start at 0)
        online_net.enable_gradient_checkpointing(s.gradient_checkpointing)
        target_net = copy.deepcopy(online_net).requires_grad_(False).eval()
        online_state, target_state = online_net, target_net
        if s.controlnet:  # an existing ControlNet: adapted through a LoRA on it
            online_state = LoRANetwork.create(online_net, s.lora_rank)
            target_state = LoRANetwork.create(target_net, s.lora_rank).requires_grad_(False)
            target_state.load_state_dict(online_state.state_dict())
    trainable = list(online_state.parameters())
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} ({s.adapter})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=1e-2)

    def steered(adapter, condition):
        """The frozen video consistency model steered by one copy (online or EMA) of the adapter."""
        def call(x, t, context):
            if s.adapter == "image_encoder":
                return unet(x, t, context, image_features=adapter(condition, x.shape[2], s.motion_scale))
            down, mid = adapter(x, t, context, condition)
            return unet(x, t, context, down_residuals=down, mid_residual=mid)
        return call

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

    # ---- one micro-batch of teacher-free consistency training (sec. 4.3) ----------------------
    def loss_fn(batch, generators):
        x0 = encode_latents(model.vae, batch["pixels"].to(rt.device), generators)  # [B, 4, F, h, w]
        context = model.encode_prompts(batch["captions"])
        # I2V: the first frame's latent; ControlNet: the per-frame control images in [0, 1]
        condition = x0[:, :, 0] if s.adapter == "image_encoder" else batch["control"].to(rt.device)
        with autocast(rt, s.precision):
            if s.objective == "diffusion":  # the frozen model is a diffusion model: predict the noise
                return denoising_loss(steered(online_net, condition), schedule, x0, context, generators)
            return distillation_loss(steered(online_net, condition), steered(target_net, condition), None,
                                     schedule, x0, context, None, None, s.original_steps, s.loss, generators)

    def after_step():
        ema_update(target_state, online_state, s.ema_decay)

    def checkpoint(step):
        if not rt.main:
            return
        save_checkpoint(out / "checkpoint.pt", {
            "step": step, "settings": dataclasses.asdict(s), "online": online_state.state_dict(),
            "target": target_state.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()})
        meta = {"settings": dataclasses.asdict(s), "schedule": dataclasses.asdict(schedule), "step": step}
        if s.adapter == "image_encoder":  # the AnimateLCM-I2V layout: motion modules + the EMA encoder
            online_encoder, unet.img_encoder = unet.img_encoder, target_net
            save_motion_module(unet, out / "i2v_motion_module.safetensors", meta)
            unet.img_encoder = online_encoder
        elif s.controlnet:
            target_state.save(out / "controlnet_lora.safetensors", metadata=meta)
        else:
            save_safetensors(controlnet_state_to_ldm(target_net), out / "controlnet.safetensors",
                             {**meta, HINTS_KEY: controlnet_hints(target_net)})

    validation = dataset[0]  # a fixed clip: its first frame (I2V) or its control video

    def validate(step):
        samples(model, target_net, s, validation, out / "val", step)

    train_loop(s, rt, batches, step, optimizer, trainable, loss_fn, after_step, checkpoint, validate,
               f"stage 3 ({s.adapter})")
    teardown(rt)
    return {"unet": unet, "online": online_net, "target": target_net}


@torch.no_grad()
def samples(model, adapter, s: Settings, clip: dict, folder: Path, step: int) -> None:
    """Fixed-seed videos steered by the EMA adapter, as GIFs: 1, 2 and 4 LCM steps, or 25 DDIM steps for
    an adapter of a diffusion model (--objective diffusion)."""
    from pipeline import Request, generate
    from video_io import to_uint8, write_video
    unet = model.unet
    was_training, online_encoder = unet.training, unet.img_encoder
    unet.eval()
    if s.adapter == "image_encoder":
        unet.img_encoder = adapter
        condition = {"image": clip["pixels"][:, 0][None], "motion_scale": s.motion_scale}
    else:
        model = dataclasses.replace(model, controlnet=adapter)
        condition = {"control": clip["control"][None]}
    diffusion = s.objective == "diffusion"
    for steps in (25,) if diffusion else (1, 2, 4):
        video = generate(model, Request(prompt=clip["caption"], frames=s.frames, height=s.size, width=s.size,
                                        steps=steps, seed=0, original_steps=s.original_steps,
                                        sampler="ddim" if diffusion else "lcm",
                                        schedule=NoiseSchedule(s.beta_schedule), progress=False, **condition))
        write_video(to_uint8(video), folder / f"step{step:06d}_{steps}steps.gif", fps=8)
    unet.img_encoder = online_encoder
    unet.train(was_training)


if __name__ == "__main__":
    sys.exit(cli.run(main))
