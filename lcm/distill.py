"""Consistency distillation and its teacher-free variant, as small functions (METHOD.md a.4-a.7, b, c.1).

One latent consistency distillation (LCD) step, in the paper's notation:
  1. pick a grid index n; t_{n+k} = grid[n], t_n = t_{n+k} - k (clamped at 0)           `grid_pairs`
  2. x_{t_{n+k}} = alpha x0 + sigma eps                                                   `NoiseSchedule.add_noise`
  3. online:  f_theta(x_{t_{n+k}}, c, t_{n+k})                                            `consistency_output`
  4. teacher: x0 and eps at t_{n+k} with guidance w, one DDIM step to t_n                 `guided`, `ddim_solver_step`
     (teacher-free: x_{t_n} = alpha_n x0 + sigma_n eps with the same eps)                 `teacher_free_point`
  5. target:  f_theta-(x_{t_n}, c, t_n), no gradient, EMA weights                         `consistency_output`
  6. loss d(online, target): pseudo-Huber or L2                                            `consistency_loss`
  7. theta- <- mu theta- + (1 - mu) theta                                                  `lcm.ema.ema_update`
"""
from __future__ import annotations

import torch

from .schedule import NoiseSchedule, consistency_output


def ddim_grid(original_steps: int = 50, total: int = 1000) -> torch.Tensor:
    """The solver grid {k - 1, 2k - 1, ..., total - 1}, k = total // original_steps (k = 20 for 50)."""
    k = total // original_steps
    return torch.arange(1, original_steps + 1) * k - 1


def per_sample(draw, generators, batch: int) -> torch.Tensor:
    """`draw(generator)` once per sample with its own generator (a list), or for the batch at once.

    Per-sample generators make a sample's randomness depend on its place in the global batch only,
    so one process and several DDP ranks draw the same numbers, and a resumed run redraws them.
    """
    if isinstance(generators, (list, tuple)):
        return torch.stack([draw(g, 1)[0] for g in generators])
    return draw(generators, batch)


def grid_pairs(batch: int, original_steps: int = 50, total: int = 1000,
               generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_{n+k}, t_n) for a batch: n uniform over the grid, t_n = t_{n+k} - k clamped at 0 (19 -> 0)."""
    grid = ddim_grid(original_steps, total)
    n = per_sample(lambda g, b: torch.randint(0, len(grid), (b,), generator=g), generator, batch)
    start = grid[n]
    return start, (start - total // original_steps).clamp(min=0)


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """CFG in the LCM form (1 + w) cond - w uncond, applied alike to x0 and eps (METHOD.md a.6)."""
    if torch.is_tensor(w):
        w = w.reshape(-1, *[1] * (cond.dim() - 1))
    return cond + w * (cond - uncond)


def ddim_solver_step(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t_end: torch.Tensor) -> torch.Tensor:
    """One DDIM (eta 0) step of the teacher to t_n: sqrt(abar_n) x0 + sqrt(1 - abar_n) eps.

    At t_n = 0 this uses abar_0 (not 1), as the LCM and AnimateLCM training code does.
    """
    return schedule.add_noise(x0, eps, t_end)


def teacher_free_point(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
                       t_end: torch.Tensor) -> torch.Tensor:
    """Teacher-free target input (AnimateLCM sec. 4.3): the clean latent noised to t_n with the same
    eps that made x_{t_{n+k}}, i.e. the one-sample score estimate -eps/sigma in place of a teacher."""
    return schedule.add_noise(x0, noise, t_end)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """Per-sample mean of sqrt((a - b)^2 + c^2) - c: L1-like far from 0, smooth at 0 (c = 0.001)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c ** 2) - c).flatten(1).mean(1)


LOSSES = ("huber", "l2")


def consistency_loss(online: torch.Tensor, target: torch.Tensor, kind: str = "huber", c: float = 0.001) -> torch.Tensor:
    """Per-sample d(f_theta, f_theta-) [B]: pseudo-Huber (the recipes' choice) or squared L2 (LCM paper)."""
    if kind == "huber":
        return pseudo_huber(online, target, c)
    if kind == "l2":
        return (online.float() - target.float()).square().flatten(1).mean(1)
    raise ValueError(f"loss must be 'huber' or 'l2', not {kind!r}")


LOSS_WEIGHTS = ("uniform", "sqrt_snr")


def loss_weight(schedule: NoiseSchedule, t: torch.Tensor, kind: str = "uniform",
                original_steps: int = 50) -> torch.Tensor:
    """lambda_n of the consistency loss per sample, at t = t_{n+k} [B]; mean 1 over the solver grid.

    "uniform": 1 (LCM, LCM-LoRA). "sqrt_snr": alpha_t / sigma_t, the time weight AnimateLCM's code carries a
    helper for (METHOD.md a.7): it leans on small t, where multi-step sampling ends.
    """
    if kind == "uniform":
        return torch.ones(t.shape, device=t.device)
    if kind == "sqrt_snr":
        def sqrt_snr(steps):
            alpha, sigma = schedule.alpha_sigma(steps)
            return alpha / sigma
        return (sqrt_snr(t) / sqrt_snr(ddim_grid(original_steps, schedule.steps)).mean()).to(t.device)
    raise ValueError(f"loss weight must be one of {LOSS_WEIGHTS}, not {kind!r}")


def diffusion_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample epsilon-prediction objective (DDPM) [B], for training teachers."""
    return (eps_pred.float() - noise.float()).square().flatten(1).mean(1)


def distillation_loss(online, target, teacher, schedule: NoiseSchedule, x0: torch.Tensor, context, uncontext,
                      w, original_steps: int = 50, kind: str = "huber", generator=None, weighting: str = "uniform"):
    """Steps 1-6 above for a batch of clean latents x0. Models are callables (x, t, context) -> eps.

    `teacher=None` builds the target point teacher-free (consistency training with the same noise).
    `generator`: one torch.Generator for the batch, or a list with one per sample.
    `weighting`: lambda_n, see `loss_weight`.
    Returns (per-sample loss [B], t_{n+k} [B]) so callers can log loss by timestep.
    """
    t_start, t_end = grid_pairs(x0.shape[0], original_steps, schedule.steps, generator)
    t_start, t_end = t_start.to(x0.device), t_end.to(x0.device)
    noise = per_sample(lambda g, b: torch.randn((b, *x0.shape[1:]), generator=g), generator, x0.shape[0]).to(x0)
    x_start = schedule.add_noise(x0, noise, t_start)
    online_out = consistency_output(schedule, x_start, online(x_start, t_start, context), t_start)
    with torch.no_grad():
        if teacher is None:
            x_end = teacher_free_point(schedule, x0, noise, t_end)
        else:
            eps_c, eps_u = teacher(x_start, t_start, context), teacher(x_start, t_start, uncontext)
            x0_c, x0_u = schedule.x0_from_eps(x_start, eps_c, t_start), schedule.x0_from_eps(x_start, eps_u, t_start)
            x_end = ddim_solver_step(schedule, guided(x0_c, x0_u, w), guided(eps_c, eps_u, w), t_end)
        target_out = consistency_output(schedule, x_end, target(x_end, t_end, context), t_end)
    weight = loss_weight(schedule, t_start, weighting, original_steps)
    return weight * consistency_loss(online_out, target_out, kind), t_start


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


def denoising_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, context, generator=None,
                   weighting: str = "uniform"):
    """The DDPM objective for training a teacher: t ~ U{0..T-1}, x_t = alpha x0 + sigma eps, ||eps_hat - eps||^2,
    times `denoising_weight(t, weighting)`.

    Returns (per-sample loss [B], t [B]); `generator` as in `distillation_loss`.
    """
    t = per_sample(lambda g, b: torch.randint(0, schedule.steps, (b,), generator=g), generator, x0.shape[0])
    noise = per_sample(lambda g, b: torch.randn((b, *x0.shape[1:]), generator=g), generator, x0.shape[0]).to(x0)
    t = t.to(x0.device)
    loss = diffusion_loss(model(schedule.add_noise(x0, noise, t), t, context), noise)
    return denoising_weight(schedule, t, weighting) * loss, t
