"""Samplers as free functions over a model callable `model(x, t) -> eps`.

The caller wraps the UNet and classifier-free guidance into that callable (see pipeline.py);
samplers never see UNets, text or VAEs. Each sampler has a pure one-step function and a loop.

* `sample_lcm`: the latent-consistency multistep sampler (LCM Alg. 1; AnimateLCM's sampler).
* `sample_ddim`, `sample_dpmpp_2m`: the baselines the paper compares against at equal step counts.

Timesteps and arithmetic follow diffusers' LCMScheduler, DDIMScheduler and
DPMSolverMultistepScheduler (float32 schedules, the same noise draws), so a seed reproduces a
diffusers result; tests/test_sampler.py checks every step against them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .schedule import NoiseSchedule, consistency_output

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | list[torch.Generator] | None


def randn(shape, generator: Generators, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Gaussian noise as diffusers' randn_tensor draws it: from one generator for the whole batch, or from
    one generator per sample (a list), so that each video's noise depends on its own seed only and not on
    the batch it is drawn in. Drawn on the generator's device, then moved: same seed, same noise."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: give one per sample")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype, device=g.device).to(device)
                          for g in generator])
    return torch.randn(shape, generator=generator, dtype=dtype,
                       device=generator.device if generator is not None else "cpu").to(device)


# ---- LCM ---------------------------------------------------------------------------------------

def lcm_timesteps(steps: int, original_steps: int = 50, strength: float = 1.0, total: int = 1000) -> list[int]:
    """Pick `steps` timesteps from the LCM skipping grid {k i - 1}, k = total // original_steps.

    The grid is the DDIM solver grid the model was distilled on (docs/sources.md); `strength` < 1
    keeps only its least noisy int(original_steps * strength) points, so sampling starts part-way (V2V).
    """
    k = total // original_steps
    grid = np.arange(1, int(original_steps * strength) + 1) * k - 1  # [k-1, 2k-1, ...]
    if steps > len(grid):
        raise ValueError(f"{steps} steps need a grid of at least that many points; the LCM grid has "
                         f"{len(grid)} (original_steps {original_steps}, strength {strength})")
    grid = grid[::-1]
    picks = np.floor(np.linspace(0, len(grid), steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in grid[picks]]


def lcm_step(schedule: NoiseSchedule, eps: torch.Tensor, t: int, x: torch.Tensor, t_next: int | None,
             noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One LCM step: the consistency function f(x, t) (the same `consistency_output` that training fits),
    re-noised to t_next with fresh noise. Returns (x_next, denoised)."""
    denoised = consistency_output(schedule, x, eps, torch.tensor(t)).to(x.dtype)
    if t_next is None:
        return denoised, denoised
    abar = schedule.alphas_cumprod
    return abar[t_next].sqrt() * denoised + (1 - abar[t_next]).sqrt() * noise, denoised


def sample_lcm(model: Model, x: torch.Tensor, schedule: NoiseSchedule, timesteps: list[int],
               generator: Generators = None, progress: bool = True,
               first_frame: torch.Tensor | None = None) -> torch.Tensor:
    """Few-step consistency sampling; fresh noise is injected between steps (LCM Alg. 1), from `generator`
    or, a list, from each sample's own generator (`randn`).

    `first_frame` (image-to-video, a known clean latent [B, C, h, w] of frame 0 of x [B, C, F, h, w]):
    before each re-noising, frame 0 of the prediction is replaced by it, so every later step starts from
    the image noised to its timestep; the replacement method of conditional sampling (Ho et al. 2022,
    "Video Diffusion Models", sec. 3.1) applied to the consistency model's predictions. The last
    prediction is the model's own: the returned frame 0 is generated, not pasted.
    """
    for i, t in enumerate(tqdm(timesteps, desc="LCM", disable=not progress)):
        last = i == len(timesteps) - 1
        eps = model(x, torch.tensor(t, device=x.device))
        noise = None if last else randn(x.shape, generator, x.dtype, x.device)
        x, _ = lcm_step(schedule, eps, t, x, None if last else timesteps[i + 1], noise)
        if first_frame is not None and not last:  # frame 0 re-noised from the known latent, same draw
            x[:, :, 0] = schedule.add_noise(first_frame.to(x), noise[:, :, 0], timesteps[i + 1])
    return x


# ---- Partial strength (SDEdit; video-to-video) -------------------------------------------------

def keep_last(timesteps: list[int], strength: float) -> list[int]:
    """The last int(steps * strength) timesteps of a full schedule, as diffusers' img2img pipelines keep them.

    SDEdit (Meng et al. 2022): the source is noised to the first kept timestep and denoised from there.
    """
    kept = min(int(len(timesteps) * strength), len(timesteps))  # diffusers' get_timesteps: int, not round
    return timesteps[len(timesteps) - kept:]


# ---- DDIM (eta = 0) ----------------------------------------------------------------------------

def ddim_timesteps(steps: int, spacing: str = "leading", offset: int = 1, total: int = 1000) -> list[int]:
    """DDIM timesteps; defaults are AnimateDiff's scheduler config (leading spacing, steps_offset 1).

    "leading" starts low for few steps: one step runs at t = 1 only, two at (501, 1), four start at
    751, so a few-step DDIM never sees pure noise. "trailing" starts at t = 999 whatever the count
    (the fair few-step baseline; docs/consistency-distillation.md, section 6)."""
    if spacing == "leading":
        ts = (np.arange(0, steps) * (total // steps)).round()[::-1] + offset
    elif spacing == "linspace":
        ts = np.linspace(0, total - 1, steps).round()[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(total, 0, -total / steps)) - 1
    else:
        raise ValueError(f"spacing must be leading, linspace or trailing, not {spacing!r}")
    return [int(t) for t in ts]


def ddim_step(schedule: NoiseSchedule, eps: torch.Tensor, t: int, x: torch.Tensor, t_prev: int,
              final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps (DDIM eq. 12, eta 0)."""
    abar = schedule.alphas_cumprod
    abar_t = abar[t]
    abar_prev = abar[t_prev] if t_prev >= 0 else torch.tensor(final_alpha_cumprod)
    x0 = (x - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    return abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps


def sample_ddim(model: Model, x: torch.Tensor, schedule: NoiseSchedule, timesteps: list[int],
                set_alpha_to_one: bool = True, progress: bool = True, full_steps: int | None = None) -> torch.Tensor:
    """DDIM over `timesteps`: all of a schedule, or the last ones of a `full_steps`-step schedule (V2V).

    Each step goes back total // full_steps, as diffusers' DDIMScheduler does whatever the spacing; with
    strength < 1 that stays the full schedule's stride (from t = 251 of 4 steps to t = 1, not to 0).
    """
    stride = schedule.steps // (full_steps or len(timesteps))
    final = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0].item()
    for t in tqdm(timesteps, desc="DDIM", disable=not progress):
        x = ddim_step(schedule, model(x, torch.tensor(t, device=x.device)), t, x, t - stride, final)
    return x


# ---- DPM-Solver++ (2M) -------------------------------------------------------------------------

def dpmpp_timesteps(steps: int, spacing: str = "linspace", total: int = 1000) -> list[int]:
    """DPM-Solver++ timesteps: "linspace" (diffusers' DPMSolverMultistepScheduler default) or "trailing"
    (the first step at t = 999 whatever the count)."""
    if spacing == "linspace":
        return [int(t) for t in np.linspace(0, total - 1, steps + 1).round()[::-1][:-1]]
    if spacing == "trailing":
        return [int(t) for t in np.arange(total, 0, -total / steps).round() - 1]
    raise ValueError(f"DPM-Solver++ spacing must be linspace or trailing, not {spacing!r}")


def dpmpp_sigmas(schedule: NoiseSchedule, timesteps: list[int]) -> torch.Tensor:
    """sigma = sqrt((1 - abar)/abar) at each timestep, then a final 0 (the clean end)."""
    abar = schedule.alphas_cumprod
    sigmas = ((1 - abar) / abar) ** 0.5
    return torch.cat([sigmas[timesteps], torch.zeros(1)]).float()


def dpmpp_2m_step(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, sigmas: torch.Tensor,
                  i: int) -> torch.Tensor:
    """DPM-Solver++ update from sigma_i to sigma_{i+1} in log-SNR lambda (Lu et al. 2022, Alg. 2).

    First order (DDIM-like) at the first step and the last (final sigma 0); second order with the
    midpoint correction D1 = (x0 - x0_prev)/r otherwise.
    """
    def alpha_sigma(s):  # VP: alpha = 1/sqrt(1+s^2), sigma = s alpha
        alpha = 1 / (s ** 2 + 1) ** 0.5
        return alpha, s * alpha

    alpha_t, sigma_t = alpha_sigma(sigmas[i + 1])
    alpha_s, sigma_s = alpha_sigma(sigmas[i])
    lam_t, lam_s = torch.log(alpha_t) - torch.log(sigma_t), torch.log(alpha_s) - torch.log(sigma_s)
    h = lam_t - lam_s
    first_order = x0_prev is None or i == len(sigmas) - 2
    x_next = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
    if not first_order:
        alpha_p, sigma_p = alpha_sigma(sigmas[i - 1])
        r = (lam_s - (torch.log(alpha_p) - torch.log(sigma_p))) / h
        x_next = x_next - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * (1.0 / r) * (x0 - x0_prev)
    return x_next


def sample_dpmpp_2m(model: Model, x: torch.Tensor, schedule: NoiseSchedule, timesteps: list[int],
                    progress: bool = True) -> torch.Tensor:
    """DPM-Solver++ 2M over `timesteps`, each step to the next one listed and the last to sigma 0.

    `timesteps` may be the last ones of a longer schedule (V2V): the steps are the same as that schedule's.
    """
    sigmas = dpmpp_sigmas(schedule, timesteps)
    x0_prev = None
    for i, t in enumerate(tqdm(timesteps, desc="DPM-Solver++ 2M", disable=not progress)):
        eps = model(x, torch.tensor(t, device=x.device)).float()
        s = sigmas[i]
        x0 = (x.float() - s / (s ** 2 + 1) ** 0.5 * eps) * (s ** 2 + 1) ** 0.5  # (x - sigma_t eps)/alpha_t
        x = dpmpp_2m_step(x.float(), x0, x0_prev, sigmas, i).to(x.dtype)
        x0_prev = x0
    return x


__all__ = ["randn", "lcm_timesteps", "lcm_step", "sample_lcm", "keep_last", "ddim_timesteps", "ddim_step", "sample_ddim",
           "dpmpp_timesteps", "dpmpp_sigmas", "dpmpp_2m_step", "sample_dpmpp_2m"]
