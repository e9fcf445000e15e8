"""Few-step video generation: text-, image- and video-to-video, and longer videos, one video or many.

The pieces in order: prompts -> text states; initial latents from one seeded CPU generator per video
(drawn in the same shapes and order as diffusers' AnimateDiffPipeline, so a seed gives the same video,
and a video does not depend on the batch it is drawn in); a sampler from `lcm/` over a model callable
(UNet + classifier-free guidance); VAE decode in frame chunks. Samplers never see the UNet; the
callable built here is all they know. `generate` is the one generation path: sample.py, evaluate.py,
the training scripts' validation samples, the toy world's measurements and the docs' figures call it.

Video-to-video has two conventions for `strength` S (`Request.strength_convention`):
* "lcm" (default), AnimateLCM's and LCMScheduler.set_timesteps(strength=S)'s: all `steps` LCM steps on
  the least noisy S share of the LCM grid; the noise is drawn before the source's posterior sample.
* "diffusers", AnimateDiffVideoToVideoPipeline's: the last int(steps * S) steps of the full schedule;
  the posterior sample is drawn first, then the noise (in diffusers' [B, F, C, h, w] layout), so a seed
  gives diffusers' video.
DDIM and DPM-Solver++ keep the last int(steps * S) steps of their schedule in both; only the draws differ.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from lcm.context import blend_windows
from lcm.sampler import (ddim_timesteps, dpmpp_timesteps, keep_last, lcm_timesteps, randn, sample_ddim,
                         sample_dpmpp_2m, sample_lcm)
from media.colour import match_colours
from lcm.schedule import NoiseSchedule
from sd15 import StableDiffusion

SAMPLERS = ("lcm", "ddim", "dpmpp_2m")
# each sampler's timestep spacings, its default first: DDIM's is AnimateDiff's config (leading, offset 1), the
# paper's baseline; DPM-Solver++'s diffusers' (linspace); "trailing" starts every step count at t = 999
SPACINGS = {"lcm": (), "ddim": ("leading", "trailing", "linspace"), "dpmpp_2m": ("linspace", "trailing")}
STRENGTH_CONVENTIONS = ("lcm", "diffusers")


@dataclass
class Request:
    prompt: str | list[str]  # one prompt, or one per video
    negative_prompt: str = ""
    frames: int = 16
    height: int = 512
    width: int = 512
    steps: int = 4
    guidance: float = 1.0
    seed: int | list[int] = 0  # one seed a prompt: video i's noise comes from a generator seeded with seed[i]
    sampler: str = "lcm"
    timestep_spacing: str | None = None  # DDIM, DPM-Solver++: None is the sampler's default (SPACINGS)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    original_steps: int = 100  # AnimateLCM-T2V's LCM grid (I2V: 200)
    clip_skip: int = 0
    image: torch.Tensor | None = None  # I2V: [N, 3, H, W] in [-1, 1], a first frame per video
    motion_scale: float = 0.8
    match_colours: bool = True  # I2V: each frame's HSV means moved onto the image's, as AnimateLCM-I2V (colour.py)
    anchor_first_frame: bool = False  # I2V, LCM: frame 0 of each intermediate prediction replaced by the image's
    #                                   latent (lcm/sampler.py:sample_lcm); not in AnimateLCM-I2V's pipeline
    video: torch.Tensor | None = None  # V2V: [N, 3, F, H, W] in [-1, 1]
    strength: float = 0.6
    strength_convention: str = "lcm"  # V2V: "lcm" (AnimateLCM's) or "diffusers" (see the module docstring)
    control: torch.Tensor | None = None  # ControlNet: per-frame control images [N, 3, F, H, W] in [0, 1]
    control_scale: float = 1.0
    context_frames: int | None = None  # long videos: window length (default: the motion module's)
    context_overlap: int = 4
    decode_chunk: int = 8
    progress: bool = True

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def seeds(self) -> list[int]:
        return [self.seed] if isinstance(self.seed, int) else list(self.seed)


def check_request(model: StableDiffusion, r: Request) -> None:
    """Refuse bad input before any heavy work, saying what to change."""
    problems = []
    n = len(r.prompts)
    if n < 1 or len(r.seeds) != n:
        problems.append(f"one seed per prompt: got {n} prompts and {len(r.seeds)} seeds")
    f = vae_scale(model.vae)
    if r.height % f or r.width % f or r.height < f or r.width < f:
        problems.append(f"height and width must be positive multiples of {f} (got {r.height}x{r.width})")
    if r.steps < 1:
        problems.append(f"steps must be at least 1 (got {r.steps})")
    if r.guidance < 1:
        problems.append(f"guidance must be at least 1 (1 disables classifier-free guidance; got {r.guidance})")
    if r.sampler not in SAMPLERS:
        problems.append(f"sampler must be one of {SAMPLERS} (got {r.sampler!r})")
    elif r.timestep_spacing is not None and r.timestep_spacing not in SPACINGS[r.sampler]:
        allowed = ", ".join(SPACINGS[r.sampler]) or "none: LCM samples its own grid"
        problems.append(f"timestep spacing {r.timestep_spacing!r} does not apply to the {r.sampler} sampler "
                        f"({allowed})")
    if r.frames < 1:
        problems.append(f"frames must be at least 1 (got {r.frames})")
    window = model.unet.cfg.motion_max_frames if model.unet.cfg.motion_modules else None
    if window and r.frames > window and not r.context_frames:
        problems.append(f"{r.frames} frames is more than the motion module's window of {window}; "
                        f"pass --context-frames {min(16, window)} to generate a longer video from "
                        "overlapping windows")
    if r.context_frames and window and r.context_frames > window:
        problems.append(f"--context-frames {r.context_frames} exceeds the motion module's window of {window}")
    if r.image is not None and model.unet.img_encoder is None and not r.anchor_first_frame:
        problems.append("image-to-video needs an AnimateLCM-I2V motion module (with its image encoder)")
    for name, value, dims in (("image", r.image, 4), ("video", r.video, 5), ("control", r.control, 5)):
        if value is not None and (value.dim() != dims or value.shape[0] != n):
            problems.append(f"{name} must be a {dims}-d tensor with one {name} per prompt ({n}), got {list(value.shape)}")
    if r.anchor_first_frame and (r.image is None or r.sampler != "lcm"):
        problems.append("anchoring the first frame needs an image (--image) and the lcm sampler")
    if r.control is not None:
        if model.controlnet is None:
            problems.append("control images need a ControlNet (--controlnet)")
        if tuple(r.control.shape[1:]) != (3, r.frames, r.height, r.width):
            problems.append(f"control video must be [N, 3, {r.frames}, {r.height}, {r.width}] (frames, height and "
                            f"width of the request), got {list(r.control.shape)}")
        if r.context_frames:
            problems.append("control images and context windows (--context-frames) cannot be combined yet")
    if r.strength_convention not in STRENGTH_CONVENTIONS:
        problems.append(f"strength convention must be one of {STRENGTH_CONVENTIONS} (got {r.strength_convention!r})")
    if r.video is not None and not 0 < r.strength <= 1:
        problems.append(f"strength must be in (0, 1] (got {r.strength})")
    if not problems:
        try:
            request_timesteps(r)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))


def guided_model(unet, context: torch.Tensor, uncontext: torch.Tensor | None, guidance: float,
           image_latent: torch.Tensor | None = None, motion_scale: float = 0.8, controlnet=None,
           control: torch.Tensor | None = None, control_scale: float = 1.0) -> Callable:
    """The model callable the samplers see: eps = eps_u + g (eps_c - eps_u); one pass when g == 1.

    With a ControlNet, its residuals for the control images join every UNet call (both CFG halves).
    `image_latent` [N, C, h, w] and `control` [N, 3, F, H, W] hold one image or control video per video.
    """
    features = {}

    def denoise(x, t, text, image):
        if control is None:
            return unet(x, t, text, image)
        copies = x.shape[0] // control.shape[0]  # 2 under classifier-free guidance
        down, mid = controlnet(x, t, text, control.repeat(copies, 1, 1, 1, 1), control_scale)
        return unet(x, t, text, image, down_residuals=down, mid_residual=mid)

    def image_features(frames: int, copies: int):
        if image_latent is None or unet.img_encoder is None:
            return None
        if frames not in features:  # depends only on the images and the frame count: computed once
            features[frames] = unet.encode_image(image_latent, frames, motion_scale)
        return [f.repeat(copies, 1, 1, 1) for f in features[frames]] if copies > 1 else features[frames]

    def model(x: torch.Tensor, t) -> torch.Tensor:
        if guidance == 1:
            return denoise(x, t, context, image_features(x.shape[2], 1))
        eps_u, eps_c = denoise(torch.cat([x, x]), t, torch.cat([uncontext, context]),
                               image_features(x.shape[2], 2)).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    return model


@torch.no_grad()
def generate(model: StableDiffusion, r: Request, timings: dict | None = None) -> torch.Tensor:
    """Videos [N, 3, F, H, W] in [0, 1], one per prompt of the request; `timings` gets seconds per phase."""
    check_request(model, r)
    timings = {} if timings is None else timings
    unet, vae = model.unet, model.vae
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    prompts, n = r.prompts, len(r.prompts)

    start = time.perf_counter()
    context = model.encode_prompts(prompts, r.clip_skip)                                  # [N, 77, D]
    uncontext = model.encode_prompts([r.negative_prompt] * n, r.clip_skip) if r.guidance > 1 else None
    timings["text"] = time.perf_counter() - start

    start = time.perf_counter()
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds]  # one per video
    shape = (n, unet.cfg.in_channels, r.frames, r.height // vae_scale(vae), r.width // vae_scale(vae))
    timesteps = request_timesteps(r)
    if r.video is None:
        latents = randn(shape, generators, dtype, device)                              # [N, 4, F, h, w]
    else:  # SDEdit-style: the source video noised to the first timestep
        latents = torch.cat([noised_source(vae, r, video[None], g, shape[1:], dtype, device, timesteps[0])
                             for video, g in zip(r.video, generators)])
    image_latent = None
    if r.image is not None:  # I2V: each video's first-frame latent, the same for every frame
        image_latent = torch.cat([vae.encode(image[None].to(vae_device(vae), vae_dtype(vae))).sample(g)
                                  for image, g in zip(r.image, generators)])
        image_latent = (image_latent * vae.cfg.scaling_factor).to(device, dtype)       # [N, 4, h, w]
    control = r.control.to(device, dtype) if r.control is not None else None
    denoiser = guided_model(unet, context, uncontext, r.guidance, image_latent, r.motion_scale, model.controlnet, control,
                      r.control_scale)
    if unet.cfg.motion_modules and (r.context_frames or r.frames > unet.cfg.motion_max_frames):
        denoiser = blend_windows(denoiser, r.frames, r.context_frames or unet.cfg.motion_max_frames,
                                 r.context_overlap)
    sample = {"lcm": sample_lcm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}[r.sampler]
    # DDIM's stride is the full schedule's, also when strength keeps only its last steps
    extra = {"lcm": {"generator": generators}, "ddim": {"full_steps": r.steps}}.get(r.sampler, {})
    if r.anchor_first_frame:
        extra["first_frame"] = image_latent
    latents = sample(denoiser, latents, r.schedule, timesteps, progress=r.progress, **extra)
    if not torch.isfinite(latents).all():
        raise FloatingPointError("the sampler produced non-finite latents (NaN/inf); try --dtype fp32 or bf16, "
                                 "or check the weights")
    timings["denoise"] = time.perf_counter() - start

    start = time.perf_counter()
    video = vae.decode_video(latents.to(vae_device(vae), vae_dtype(vae)), chunk_frames=r.decode_chunk)
    video = (video.float() / 2 + 0.5).clamp(0, 1)                                         # [N, 3, F, H, W]
    if not torch.isfinite(video).all():
        raise FloatingPointError("the VAE decoded non-finite frames; decode in fp32 (--vae-dtype fp32)")
    if r.image is not None and r.match_colours:
        video = match_colours(video, (r.image.to(video) / 2 + 0.5).clamp(0, 1))
    timings["decode"] = time.perf_counter() - start
    return video


def noised_source(vae, r: Request, video: torch.Tensor, generator: torch.Generator, shape: tuple, dtype,
                  device, t: int) -> torch.Tensor:
    """One V2V source [1, 3, F, H, W] encoded and noised to t, its draws in `r.strength_convention`'s order:
    AnimateLCM's draws the noise first; diffusers' the posterior sample first, then the noise in its
    [B, F, C, h, w] layout (so a seed gives diffusers' video)."""
    def encode():
        return vae.encode_video(video.to(vae_device(vae), vae_dtype(vae)), generator=generator)
    if r.strength_convention == "diffusers":
        source = encode()
        c, f, h, w = shape
        noise = randn((1, f, c, h, w), generator, dtype).transpose(1, 2)
    else:
        noise = randn((1, *shape), generator, dtype)
        source = encode()
    return r.schedule.add_noise(source.to(device, dtype), noise.to(device), t)


def request_timesteps(r: Request) -> list[int]:
    """The sampler's timesteps; for V2V as `r.strength_convention` says (see the module docstring)."""
    if r.sampler == "lcm" and (r.video is None or r.strength_convention == "lcm"):
        return lcm_timesteps(r.steps, r.original_steps, r.strength if r.video is not None else 1.0)
    spacing = r.timestep_spacing or (SPACINGS[r.sampler] or (None,))[0]
    timesteps = {"lcm": lambda: lcm_timesteps(r.steps, r.original_steps),
                 "ddim": lambda: ddim_timesteps(r.steps, spacing, offset=1 if spacing == "leading" else 0),
                 "dpmpp_2m": lambda: dpmpp_timesteps(r.steps, spacing)}[r.sampler]()
    if r.video is None:
        return timesteps
    kept = keep_last(timesteps, r.strength)
    if not kept:
        least = math.ceil(1000 / r.steps) / 1000
        raise ValueError(f"strength {r.strength} keeps int({r.steps} * {r.strength}) = 0 of the {r.steps} "
                         f"{r.sampler} steps; raise --strength to at least {least:g} or use more --steps")
    return kept


def vae_scale(vae) -> int:
    """Pixels per latent pixel: 8 for SD1.5's VAE (each level but the last halves the size)."""
    return 2 ** (len(vae.cfg.block_out_channels) - 1)


def vae_device(vae) -> torch.device:
    return next(vae.parameters()).device


def vae_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype
