"""The denoising (DDPM) objective that trains the teachers: the image model, the motion module and a
ControlNet of the diffusion model (train_teacher.py). Consistency distillation is in lcm/distill.py.

    t ~ U{0..T-1},  x_t = alpha_t x0 + sigma_t eps,  loss = lambda(t) ||eps_theta(x_t, c, t) - eps||^2
"""
from __future__ import annotations

import torch

from .schedule import NoiseSchedule


def diffusion_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample epsilon-prediction error (DDPM's simple loss) [B]."""
    return (eps_pred.float() - noise.float()).square().flatten(1).mean(1)


DENOISING_WEIGHTS = ("uniform", "sqrt_v", "v")


def denoising_weight(schedule: NoiseSchedule, t: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    """Time weight of the epsilon loss per sample [B]; mean 1 over t = 0..T-1.

    "uniform": DDPM's simple loss, under which an error of the predicted x0 counts SNR_t times, so almost
    nothing at high noise, where a sample's layout and a video's motion are decided. "v": 1 / abar_t,
    which makes ||eps_hat - eps||^2 / abar_t equal to the v-prediction loss ||v_hat - v||^2 (Salimans
    & Ho 2022, sec. 4): x0 errors then count (1 + SNR_t) times, at least once at every noise level. "sqrt_v": 1 / alpha_t,
    halfway (on a log scale) between the two: it raises the noise levels at which a video's motion is
    decided (t ~ 650-900 on SD's schedule) without letting the last ones (alpha_t < 0.1) dominate.
    """
    if kind == "uniform":
        return torch.ones(t.shape, device=t.device)
    if kind in ("v", "sqrt_v"):
        alpha, _ = schedule.alpha_sigma(torch.arange(schedule.steps))
        weight = 1 / alpha.square() if kind == "v" else 1 / alpha
        return (weight / weight.mean())[t.cpu()].to(t.device)
    raise ValueError(f"denoising loss weight must be one of {DENOISING_WEIGHTS}, not {kind!r}")


def denoising_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, context, noise: torch.Tensor,
                   t: torch.Tensor, weighting: str = "uniform") -> torch.Tensor:
    """The DDPM objective for training a teacher, with the loop's draws t [B] ~ U{0..T-1} and eps [B, ...]:
    x_t = alpha x0 + sigma eps, ||eps_hat - eps||^2 times `denoising_weight(t, weighting)`. Returns the
    per-sample loss [B]."""
    loss = diffusion_loss(model(schedule.add_noise(x0, noise, t), t, context), noise)
    return denoising_weight(schedule, t, weighting) * loss


def drop_captions(captions: list[str], dropped: torch.Tensor) -> list[str]:
    """Each caption whose `dropped` [B] is True replaced by "": teaches the unconditional model that
    classifier-free guidance needs."""
    return ["" if d else c for c, d in zip(captions, dropped.tolist())]
