"""Each training script's models and the body of its loop, for benchmarks/budget.py to count.

The models come from the script's own function (`train_video.py:student_and_target` and its kind), built
from what load_sd15 would return for SD1.5-sized files (`sd15_model`: shapes only, on the meta device, or
real tensors at the tiny and small sizes). The loop bodies are the scripts' loops, line for line, without
what keeps a run safe (log, checkpoints, signals); tests/test_budget.py checks that each calls the same
functions in the same order as its script.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

import train_adapter
import train_image
import train_teacher
import train_video
from benchmarks.memory import LiveMemory
from lcm.denoise import denoising_loss, drop_captions
from lcm.distill import distillation_loss, solver_pair, teacher_ddim_point, teacher_free_point
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule
from runtime.draws import coin_flips, integers, normal, uniform
from sd15 import StableDiffusion
from text import CLIPTextEncoder, TextEncoderConfig, Tokenizer
from unet.config import MotionConfig, UNetConfig
from unet.controlnet import SD15_HINT_CHANNELS, ControlNet
from unet.lora import LoRANetwork
from unet.model import UNet
from vae import AutoencoderKL, VAEConfig

SCRIPTS = {"teacher": train_teacher, "image": train_image, "video": train_video, "adapter": train_adapter}
SIZES = {  # (UNet, VAE, text encoder); tiny and small are for checking the count against real tensors
    "sd15": (UNetConfig.sd15(), VAEConfig(), TextEncoderConfig()),
    "small": (UNetConfig(block_out_channels=(64, 128, 256, 256), cross_attention_dim=256),
              VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1),
              TextEncoderConfig(width=256, layers=2, heads=4)),
    "tiny": (UNetConfig.tiny(), VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_groups=8),
             TextEncoderConfig(width=32, layers=2, heads=4, mlp_width=64)),
}
# the motion-module files each script is given: AnimateDiff v2 (the teacher's) and AnimateLCM's
TEACHER_MOTION = MotionConfig("animatediff_v2", mid_block=True, max_frames=32, frame_norm="per_frame")
ANIMATELCM_MOTION = MotionConfig("animatelcm_t2v", mid_block=True, max_frames=64, frame_norm="per_frame")
ROLES = ("trained weights", "other weights", "gradients", "optimizer state", "activations")


def sd15_model(size: str, motion: MotionConfig | None) -> StableDiffusion:
    """What load_sd15 returns for files of this size, on the current default device (meta: shapes only)."""
    unet_cfg, vae_cfg, text_cfg = SIZES[size]
    unet = UNet(unet_cfg.with_motion(motion) if motion else unet_cfg)
    return StableDiffusion(unet=unet.eval(), vae=AutoencoderKL(vae_cfg).eval(),
                           text_encoder=CLIPTextEncoder(text_cfg).eval(), tokenizer=Tokenizer())


def new_lora_file(unet: UNet, rank: int = 64, alpha: float = 8.0) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors for this UNet (stage 1's output: AnimateLCM's rank and alpha)."""
    lora = LoRANetwork.create(unet, rank, alpha)
    lora.detach()
    return lora.state_dict()


@dataclasses.dataclass
class Run:
    """Where a stage's models are built and its step runs, and the GPU rules it follows."""
    size: str            # a key of SIZES
    built_on: str        # "meta" for a fake count (shapes only), "cpu" for real tensors
    device: torch.device  # where the step runs: the CPU, with fake or real tensors
    low: torch.dtype | None  # the dtype frozen weights are stored in (runtime/distributed.py:low_precision)
    memory: LiveMemory

    def autocast(self):
        """runtime/distributed.py:autocast as on the GPU: bf16 or fp16 autocast (with CUDA's rules while
        `cuda_fp32_ops` lasts), none for fp32."""
        return torch.autocast("cpu", dtype=self.low) if self.low is not None else contextlib.nullcontext()


@dataclasses.dataclass
class Stage:
    """A script's models and the body of its loop: `micro_step(batch, generators)` up to backward(), and
    `after_step()`, what follows the optimizer step (the EMA update)."""
    models: list
    trainable: list
    micro_step: object
    after_step: object


def teacher_stage(s, run: Run) -> Stage:
    model = sd15_model(run.size, TEACHER_MOTION if s.motion or s.train == "controlnet" else None)
    online, target, trainable = train_teacher.learners(s, model, run.built_on, run.low)
    denoiser = train_teacher.denoising(s, model.unet)
    schedule = NoiseSchedule(s.beta_schedule)

    def micro_step(batch, generators):
        x0 = model.encode_latents(batch["pixels"].to(run.device), generators)
        captions = batch["captions"]
        if s.caption_dropout > 0:
            captions = drop_captions(captions, coin_flips(generators, s.caption_dropout))
        control = batch["control"].to(run.device) if s.train == "controlnet" else None
        t = integers(generators, schedule.steps).to(run.device)
        noise = normal(generators, x0.shape[1:]).to(x0)
        with run.autocast():
            loss = denoising_loss(denoiser(online, control), schedule, x0, model.encode_prompts(captions),
                                  noise, t, s.loss_weight)
        (loss.mean() / s.grad_accum).backward()

    def after_step():
        if target is not online:
            ema_update(target, online, s.ema_decay)
    return Stage([model.unet, model.vae, model.text_encoder, online, target], trainable, micro_step, after_step)


def image_stage(s, run: Run) -> Stage:
    model = sd15_model(run.size, None)
    online, target, lora, target_lora, teacher = train_image.student_and_target(s, model.unet)
    trainable = list(lora.parameters())
    schedule = NoiseSchedule(s.beta_schedule)

    def micro_step(batch, generators):
        x0 = model.encode_latents(batch["pixels"].to(run.device), generators)
        context = model.encode_prompts(batch["captions"])
        uncontext = model.encode_prompts([""] * len(batch["captions"]))
        w = uniform(generators, s.w_min, s.w_max).to(run.device)
        n = integers(generators, s.original_steps)
        t_start, t_end = solver_pair(n.to(run.device), s.original_steps)
        noise = normal(generators, x0.shape[1:]).to(x0)
        with run.autocast():
            loss = distillation_loss(
                online=online, target=target, target_point=teacher_ddim_point(teacher, uncontext, w),
                schedule=schedule, x0=x0, noise=noise, t_start=t_start, t_end=t_end,
                context=context, original_steps=s.original_steps, loss=s.loss, weighting=s.loss_weight)
        (loss.mean() / s.grad_accum).backward()

    def after_step():
        if s.ema_decay > 0:
            ema_update(target_lora, lora, s.ema_decay)
    return Stage([model.unet, model.vae, model.text_encoder, target, lora, target_lora], trainable, micro_step,
                 after_step)


def video_stage(s, run: Run) -> Stage:
    teacher = sd15_model(run.size, TEACHER_MOTION)
    with run.memory.paused():  # the LoRA file is read into CPU memory
        stage1_lora = None if s.direct else new_lora_file(teacher.unet)
    online, target, spatial, trainable, ema_pairs = train_video.student_and_target(s, teacher.unet, stage1_lora,
                                                                                  run.low)
    schedule = NoiseSchedule(s.beta_schedule)

    def micro_step(batch, generators):
        x0 = teacher.encode_latents(batch["pixels"].to(run.device), generators)
        context = teacher.encode_prompts(batch["captions"])
        uncontext = teacher.encode_prompts([""] * len(batch["captions"]))
        w = uniform(generators, s.w_min, s.w_max).to(run.device)
        n = integers(generators, s.original_steps)
        t_start, t_end = solver_pair(n.to(run.device), s.original_steps)
        noise = normal(generators, x0.shape[1:]).to(x0)
        with run.autocast():
            loss = distillation_loss(
                online=online, target=target, target_point=teacher_ddim_point(teacher.unet, uncontext, w),
                schedule=schedule, x0=x0, noise=noise, t_start=t_start, t_end=t_end,
                context=context, original_steps=s.original_steps, loss=s.loss, weighting=s.loss_weight)
        (loss.mean() / s.grad_accum).backward()

    def after_step():
        for follower, leader in ema_pairs:
            ema_update(follower, leader, s.ema_decay)
    models = [teacher.unet, teacher.vae, teacher.text_encoder, online, target, *spatial.values()]
    return Stage(models, trainable, micro_step, after_step)


def adapter_stage(s, run: Run) -> Stage:
    model = sd15_model(run.size, ANIMATELCM_MOTION)
    given = None
    if s.adapter == "controlnet" and s.controlnet:  # a ControlNet-1.1 file: the shape of the UNet's encoder
        given = ControlNet.from_unet(model.unet, hint_channels=SD15_HINT_CHANNELS[:len(model.vae.cfg.block_out_channels)])
    unet, online_net, target_net, trained, follower, trainable = train_adapter.adapter_models(s, model, given, run.built_on)
    steered = train_adapter.steering(s, unet)
    schedule = NoiseSchedule(s.beta_schedule)

    def micro_step(batch, generators):
        x0 = model.encode_latents(batch["pixels"].to(run.device), generators)
        context = model.encode_prompts(batch["captions"])
        condition = x0[:, :, 0] if s.adapter == "image_encoder" else batch["control"].to(run.device)
        n = integers(generators, s.original_steps)
        t_start, t_end = solver_pair(n.to(run.device), s.original_steps)
        noise = normal(generators, x0.shape[1:]).to(x0)
        with run.autocast():
            loss = distillation_loss(
                online=steered(online_net, condition), target=steered(target_net, condition),
                target_point=teacher_free_point, schedule=schedule, x0=x0, noise=noise,
                t_start=t_start, t_end=t_end, context=context, original_steps=s.original_steps, loss=s.loss)
        (loss.mean() / s.grad_accum).backward()

    def after_step():
        ema_update(follower, trained, s.ema_decay)
    models = [unet, model.vae, model.text_encoder, online_net, target_net, trained, follower]
    return Stage(models, trainable, micro_step, after_step)


STAGES = {"teacher": teacher_stage, "image": image_stage, "video": video_stage, "adapter": adapter_stage}
