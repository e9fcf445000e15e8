"""Stage 3 of AnimateLCM: teacher-free adaptation of adapters (AnimateLCM sec. 4.3, METHOD.md c).

    # (a) image-to-video: train the AnimateLCM-I2V image encoder from scratch on video clips,
    #     conditioned on each clip's first frame
    python train_adapter.py --adapter image_encoder --sd15 v1-5.safetensors \\
        --motion runs/stage2/motion_module.safetensors --lora runs/stage1/lora.safetensors \\
        --data my_videos/ --out runs/i2v
    # (b) an existing SD1.5 ControlNet made to work with the video consistency model, by training a
    #     LoRA on it; control images come per frame from a folder of videos named like the data's
    python train_adapter.py --adapter controlnet --controlnet control_v11f1p_sd15_depth.pth \\
        --control-data my_depth_videos/ ... --out runs/control
    torchrun --nproc_per_node 4 train_adapter.py ...;  --resume true continues a run.

No teacher: the target point is the clean latent noised to t_n with the *same* noise that made the
online input at t_{n+k} (the one-sample score estimate, i.e. consistency training). The video
consistency model (SD1.5 + stage-1 LoRA merged + stage-2 motion modules) stays frozen; only the
adapter (image encoder, or the ControlNet's LoRA) trains, and the target is its EMA.
Outputs: i2v_motion_module.safetensors (motion modules + img_encoder, the AnimateLCM-I2V layout) or
controlnet_lora.safetensors; checkpoint.pt; log.jsonl.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from lcm.distill import distillation_loss
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from sd15 import load_sd15
from training import (JsonlLog, StopSignal, all_reduce_grads, autocast, load_checkpoint, parse_settings, rng_state,
                      save_checkpoint, set_rng_state, setup, timestep_buckets, warmup)
from unet.adapter import ImageEncoder
from unet.load import save_motion_module
from unet.lora import LoRANetwork


@dataclasses.dataclass
class Settings:
    adapter: str = "image_encoder"  # "image_encoder" (I2V) or "controlnet"
    sd15: str = ""
    motion: str = ""               # the stage-2 (or released AnimateLCM) motion module
    lora: str = ""                 # the stage-1 spatial LoRA, merged into the frozen UNet
    controlnet: str = ""           # ControlNet-1.1 SD1.5 file; empty: initialised from the UNet
    data: str = ""
    control_data: str = ""         # --adapter controlnet: control videos, same names as --data
    out: str = "runs/adapter"
    resume: bool = False
    frames: int = 16
    stride: int = 4
    size: int = 256
    batch: int = 1
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.95
    lora_rank: int = 64
    motion_scale: float = 0.8      # I2V: strength of the frame-index signal
    original_steps: int = 50
    loss: str = "huber"
    beta_schedule: str = "beta_linear"
    precision: str = "bf16"
    gradient_checkpointing: bool = True
    save_every: int = 250
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    workers: int = 2


def main(argv=None):
    s = parse_settings(Settings, argv, __doc__.split("\n")[0])
    if s.adapter not in ("image_encoder", "controlnet"):
        sys.exit(f"--adapter must be image_encoder or controlnet, not {s.adapter!r}")
    rt = setup(s.seed, s.device)
    out = Path(s.out)
    if rt.main:
        print(f"settings: {dataclasses.asdict(s)}")

    # ---- models: the frozen video consistency model + the trainable adapter ------------------
    model = load_sd15(s.sd15, s.motion, [(s.lora, 1.0)] if s.lora else [], device=rt.device)
    unet = model.unet.requires_grad_(False)
    unet.train().enable_gradient_checkpointing(s.gradient_checkpointing)
    if s.adapter == "image_encoder":
        if unet.img_encoder is None:  # from scratch (zero-initialised: starts as "no image")
            unet.img_encoder = ImageEncoder(unet.cfg.in_channels, unet.cfg.block_out_channels).to(rt.device)
            unet.cfg = dataclasses.replace(unet.cfg, image_encoder=True)
        adapter = unet.img_encoder.requires_grad_(True)
        trainable = list(adapter.parameters())
    else:
        from unet.controlnet import ControlNet, load_controlnet
        adapter = load_controlnet(s.controlnet).to(rt.device) if s.controlnet else ControlNet.from_unet(unet)
        adapter.requires_grad_(False).train()
        ema_adapter = copy.deepcopy(adapter).eval()
        lora = LoRANetwork.create(adapter, s.lora_rank)
        target_lora = LoRANetwork.create(ema_adapter, s.lora_rank).requires_grad_(False)
        target_lora.load_state_dict(lora.state_dict())
        trainable = list(lora.parameters())
    if s.adapter == "image_encoder":
        ema_adapter = copy.deepcopy(adapter).requires_grad_(False).eval()
        online_state, target_state = adapter, ema_adapter
    else:
        online_state, target_state = lora, target_lora
    if rt.main:
        print(f"trainable parameters: {sum(p.numel() for p in trainable):,} ({s.adapter})")
    schedule = NoiseSchedule(s.beta_schedule)
    optimizer = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=1e-2)

    def video_model(condition_net, condition):
        """The frozen video consistency model steered by one copy (online or EMA) of the adapter."""
        def call(x, t, context):
            if s.adapter == "image_encoder":
                return unet(x, t, context, image_features=condition_net(condition, x.shape[2], s.motion_scale))
            down, mid = condition_net(x, t, context, condition)
            return unet(x, t, context, down_residuals=down, mid_residual=mid)
        return call

    # ---- data --------------------------------------------------------------------------------
    from data import ResumableSampler, VideoCaptionDataset, collate
    dataset = VideoCaptionDataset(s.data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed)
    controls = (VideoCaptionDataset(s.control_data, frames=s.frames, stride=s.stride, size=s.size, seed=s.seed)
                if s.adapter == "controlnet" else None)
    sampler = ResumableSampler(len(dataset), s.batch, s.seed, rt.rank, rt.world)
    loader = torch.utils.data.DataLoader(
        dataset if controls is None else list(zip(range(len(dataset)), range(len(dataset)))),
        batch_sampler=sampler, num_workers=s.workers,
        collate_fn=collate if controls is None else lambda pairs: pair_collate(pairs, dataset, controls))

    step, generator = 0, torch.Generator().manual_seed(s.seed + rt.rank)
    if s.resume and (out / "checkpoint.pt").exists():
        state = load_checkpoint(out / "checkpoint.pt")
        online_state.load_state_dict(state["online"])
        target_state.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        step = state["step"]

    def checkpoint():
        if not rt.main:
            return
        save_checkpoint(out / "checkpoint.pt", {
            "step": step, "settings": dataclasses.asdict(s), "online": online_state.state_dict(),
            "target": target_state.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(), "generator": generator.get_state(), "rng": rng_state()})
        meta = {"settings": dataclasses.asdict(s), "schedule": dataclasses.asdict(schedule), "step": step}
        if s.adapter == "image_encoder":
            online_encoder, unet.img_encoder = unet.img_encoder, ema_adapter  # export the EMA encoder
            save_motion_module(unet, out / "i2v_motion_module.safetensors", meta)
            unet.img_encoder = online_encoder
        else:
            target_lora.save(out / "controlnet_lora.safetensors", metadata=meta)

    # ---- loop: teacher-free consistency training ----------------------------------------------
    log, stop = JsonlLog(out / "log.jsonl", rt.main), StopSignal()
    bar = tqdm(total=s.steps, initial=step, disable=not rt.main, desc=f"stage 3 ({s.adapter})")
    batches = iter(loader)
    while step < s.steps and not stop.requested:
        for group in optimizer.param_groups:
            group["lr"] = s.lr * warmup(step, s.warmup_steps)
        for _ in range(s.grad_accum):
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            with torch.no_grad():
                x0 = model.vae.encode_video(batch["pixels"].to(rt.device), generator=generator)
                context = model.encode_prompts(batch["captions"])
            # I2V condition: the first frame's latent; control condition: per-frame images in [0, 1]
            condition = x0[:, :, 0] if s.adapter == "image_encoder" else (batch["control"].to(rt.device) + 1) / 2
            with autocast(rt, s.precision):
                per_sample, t = distillation_loss(
                    video_model(adapter, condition), video_model(ema_adapter, condition), None, schedule, x0,
                    context, None, None, s.original_steps, s.loss, generator)
            (per_sample.mean() / s.grad_accum).backward()
        loss = per_sample.mean().item()
        if not torch.isfinite(per_sample).all():
            sys.exit(f"non-finite loss at step {step}; the last good checkpoint is {out / 'checkpoint.pt'}.")
        all_reduce_grads(trainable, rt)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(target_state, online_state, s.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % s.log_every == 0 or step == s.steps:
            log.write(step=step, loss=loss, grad_norm=grad_norm.item(),
                      **timestep_buckets(t.cpu(), per_sample.detach().cpu()))
        if step % s.save_every == 0 or step == s.steps or stop.requested:
            checkpoint()
    if stop.requested and rt.main:
        print(f"stopped by signal at step {step}; resume with --resume true")


def pair_collate(pairs, dataset, controls):
    """A video batch with its control videos (same index, same frame sampling) under "control"."""
    batch = [dataset[i] for i, _ in pairs]
    out = {"pixels": torch.stack([b["pixels"] for b in batch]), "captions": [b["caption"] for b in batch]}
    out["control"] = torch.stack([controls[j]["pixels"] for _, j in pairs])
    return out


if __name__ == "__main__":
    main()
