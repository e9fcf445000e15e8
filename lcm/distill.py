"""Consistency distillation and its teacher-free variant, as small functions (AnimateLCM v1 sec. 4, via a
review; each fact's source: docs/sources.md).

One latent consistency distillation (LCD) step, in the paper's notation:
  1. a grid index n (drawn by the loop); t_{n+k} = grid[n], t_n = t_{n+k} - k (clamped at 0)   `solver_pair`
  2. x_{t_{n+k}} = alpha x0 + sigma eps                                                   `NoiseSchedule.add_noise`
  3. online:  f_theta(x_{t_{n+k}}, c, t_{n+k})                                            `consistency_output`
  4. the point x_{t_n}: the teacher's x0 and eps at t_{n+k} with guidance w, one DDIM    `teacher_ddim_point`
     step to t_n; or teacher-free, x0 noised to t_n with the same eps                    `teacher_free_point`
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


def solver_pair(n: torch.Tensor, original_steps: int = 50, total: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_{n+k}, t_n) for grid indices n [B]: t_{n+k} = grid[n], t_n = t_{n+k} - k clamped at 0 (19 -> 0)."""
    start = ddim_grid(original_steps, total).to(n.device)[n]
    return start, (start - total // original_steps).clamp(min=0)


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """CFG in the LCM form (1 + w) cond - w uncond, applied alike to x0 and eps (docs/sources.md)."""
    if torch.is_tensor(w):
        w = w.reshape(-1, *[1] * (cond.dim() - 1))
    return cond + w * (cond - uncond)


def ddim_solver_step(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t_end: torch.Tensor) -> torch.Tensor:
    """One DDIM (eta 0) step of the teacher to t_n: sqrt(abar_n) x0 + sqrt(1 - abar_n) eps.

    At t_n = 0 this uses abar_0 (not 1), as the LCM and AnimateLCM training code does.
    """
    return schedule.add_noise(x0, eps, t_end)


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
    helper for (docs/sources.md): with an L1-like distance it measures the error in the eps view, so it
    weighs high noise, where sampling starts, little (t = 999: 0.04 on beta_linear;
    docs/consistency-distillation.md, section 4).
    """
    if kind == "uniform":
        return torch.ones(t.shape, device=t.device)
    if kind == "sqrt_snr":
        def sqrt_snr(steps):
            alpha, sigma = schedule.alpha_sigma(steps)
            return alpha / sigma
        return (sqrt_snr(t) / sqrt_snr(ddim_grid(original_steps, schedule.steps)).mean()).to(t.device)
    raise ValueError(f"loss weight must be one of {LOSS_WEIGHTS}, not {kind!r}")


# ---- step 4, the point at t_n the target is evaluated at: two interchangeable functions -------------
# Each is called as point(schedule, x0, noise, x_start, t_start, t_end, context) -> x_{t_n}, without gradient.

def teacher_ddim_point(teacher, uncontext: torch.Tensor, w: torch.Tensor | float):
    """Consistency distillation: the teacher's x0 and eps at t_{n+k}, each guided with w in the LCM form,
    then one DDIM step to t_n (AnimateLCM v1 sec. 4.1, via a review; docs/sources.md).
    `teacher(x, t, context) -> eps`."""
    def point(schedule, x0, noise, x_start, t_start, t_end, context):
        eps_c, eps_u = teacher(x_start, t_start, context), teacher(x_start, t_start, uncontext)
        x0_c, x0_u = schedule.x0_from_eps(x_start, eps_c, t_start), schedule.x0_from_eps(x_start, eps_u, t_start)
        return ddim_solver_step(schedule, apply_guidance(x0_c, x0_u, w), apply_guidance(eps_c, eps_u, w), t_end)
    return point


def teacher_free_point(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, x_start: torch.Tensor,
                       t_start: torch.Tensor, t_end: torch.Tensor, context=None) -> torch.Tensor:
    """Teacher-free (AnimateLCM v1 sec. 4.3, via a review): the clean latent noised to t_n with the same eps
    that made x_{t_{n+k}}, i.e. the one-sample score estimate -eps/sigma in place of a teacher."""
    return schedule.add_noise(x0, noise, t_end)


def distillation_loss(*, online, target, target_point, schedule: NoiseSchedule, x0: torch.Tensor,
                      noise: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, context,
                      original_steps: int = 50, loss: str = "huber", weighting: str = "uniform") -> torch.Tensor:
    """Steps 2-6 above for a batch of clean latents x0 [B, ...], with the draws of the training loop: the
    noise eps [B, ...] and the pair (t_{n+k}, t_n) [B] (`solver_pair`). Models are callables
    (x, t, context) -> eps; `target_point` is `teacher_ddim_point(teacher, uncontext, w)` or
    `teacher_free_point`; `weighting` is lambda_n (`loss_weight`). Returns the per-sample loss [B]."""
    x_start = schedule.add_noise(x0, noise, t_start)                                              # 2
    online_out = consistency_output(schedule, x_start, online(x_start, t_start, context), t_start)  # 3
    with torch.no_grad():  # the target carries no gradient: it is where the online model is pulled to
        x_end = target_point(schedule, x0, noise, x_start, t_start, t_end, context)              # 4
        target_out = consistency_output(schedule, x_end, target(x_end, t_end, context), t_end)  # 5
    weight = loss_weight(schedule, t_start, weighting, original_steps)
    return weight * consistency_loss(online_out, target_out, loss)                               # 6
