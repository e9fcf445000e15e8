"""Noise schedules and the latent-consistency parameterisation (docs/sources.md, the consistency model).

Forward process: x_t = alpha_t x0 + sigma_t eps, with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).

Beta schedules get names that say what is linear, because the word "linear" names *different*
schedules in the two code bases this field mixes:

| ours               | betas                          | diffusers       | CompVis / LDM / ComfyUI | used by |
|--------------------|--------------------------------|-----------------|--------------------------|---------|
| `beta_linear`      | linspace(b0, b1)               | `linear`        | `sqrt_linear`            | AnimateDiff, AnimateLCM (b1 0.012; I2V 0.014) |
| `sqrt_beta_linear` | linspace(sqrt b0, sqrt b1)^2   | `scaled_linear` | `linear`                 | SD1.5 training, LCM-LoRA |
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULES = ("beta_linear", "sqrt_beta_linear")
ALIASES = {  # other code bases' names -> ours, for the error message and the README
    ("diffusers", "linear"): "beta_linear", ("diffusers", "scaled_linear"): "sqrt_beta_linear",
    ("CompVis/LDM", "sqrt_linear"): "beta_linear", ("CompVis/LDM", "linear"): "sqrt_beta_linear",
}


@dataclass(frozen=True)
class NoiseSchedule:
    kind: str = "beta_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = 1000

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            meanings = "; ".join(f"{src} '{name}' is our '{ours}'" for (src, name), ours in ALIASES.items())
            raise ValueError(f"unknown beta schedule {self.kind!r}: use one of {SCHEDULES}. The bare names "
                             f"are ambiguous across code bases: {meanings}.")

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..steps-1, float32 as diffusers computes it (so timesteps match bit for bit)."""
        if self.kind == "beta_linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float32)
        else:
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.steps, dtype=torch.float32) ** 2
        return torch.cumprod(1.0 - betas, dim=0)

    def alpha_sigma(self, t, like: torch.Tensor | None = None):
        """(alpha_t, sigma_t) = (sqrt abar_t, sqrt(1 - abar_t)), shaped to broadcast over `like`."""
        abar = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]  # the table lives on the CPU
        if like is not None:
            abar = abar.to(like.device).reshape(-1, *[1] * (like.dim() - 1))
        return abar.sqrt(), (1 - abar).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps (eq. 1 of DDPM in this notation)."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return (alpha * x0 + sigma * noise).to(x0.dtype)

    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """x0 = (x_t - sigma_t eps) / alpha_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - sigma * eps) / alpha

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """eps = (x_t - alpha_t x0) / sigma_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - alpha * x0) / sigma


def boundary_scalings(t, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """LCM's boundary scalings for the skip form of Consistency Models eq. 5 (docs/sources.md):
    c_skip = sd^2/((st)^2+sd^2), c_out = st/sqrt((st)^2+sd^2).

    c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x exactly: the consistency function's boundary.
    """
    scaled = torch.as_tensor(t) * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def consistency_output(schedule: NoiseSchedule, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, eps): the consistency model's prediction of x0."""
    c_skip, c_out = boundary_scalings(t)
    shape = (-1, *[1] * (x_t.dim() - 1))
    c_skip, c_out = c_skip.to(x_t.device).reshape(shape), c_out.to(x_t.device).reshape(shape)
    return c_out * schedule.x0_from_eps(x_t, eps, t) + c_skip * x_t
