"""Consistency-distillation pieces against direct computation and diffusers' scheduler values."""
import copy

import pytest
import torch
from torch import nn

from lcm.denoise import denoising_loss, denoising_weight, diffusion_loss, drop_captions
from lcm.distill import (apply_guidance, consistency_loss, ddim_grid, ddim_solver_step, distillation_loss, loss_weight,
                         pseudo_huber, solver_pair, teacher_ddim_point, teacher_free_point)
from lcm.ema import ema_update
from lcm.schedule import NoiseSchedule, boundary_scalings, consistency_output
from runtime.draws import coin_flips, integers, normal, uniform


def test_grid_and_pairs_follow_the_lcm_recipe():
    assert ddim_grid(50)[:3].tolist() == [19, 39, 59] and ddim_grid(50)[-1] == 999 and len(ddim_grid(50)) == 50
    start, end = solver_pair(torch.randint(0, 50, (10000,), generator=torch.Generator().manual_seed(0)), 50)
    assert set(start.tolist()) == set(ddim_grid(50).tolist())  # every grid point gets drawn
    assert ((start - end == 20) | (end == 0)).all() and end.min() == 0
    assert (end[start == 19] == 0).all()


def test_ddim_solver_step_equals_diffusers_ddim_and_lcm_boundary_values():
    """One teacher DDIM step to t_n is diffusers' DDIMScheduler step from t_{n+k} to t_n."""
    from diffusers import DDIMScheduler, LCMScheduler
    schedule = NoiseSchedule("beta_linear")
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=False)
    ref.set_timesteps(50)  # step 20 = 1000 // 50, as the distillation grid
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in (999, 519, 39):
        x0 = schedule.x0_from_eps(x, eps, torch.tensor([t, t]))
        ours = ddim_solver_step(schedule, x0, eps, torch.tensor([t - 20] * 2))
        torch.testing.assert_close(ours, ref.step(eps, t, x).prev_sample, atol=1e-5, rtol=1e-5)
    lcm = LCMScheduler(beta_schedule="linear")
    for t in (0, 1, 19, 499, 999):
        c_skip, c_out = boundary_scalings(torch.tensor(t))
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        assert (c_skip.item(), c_out.item()) == pytest.approx((ref_skip.item(), ref_out.item()), rel=1e-6)


def test_guidance_and_losses_against_direct_formulas():
    c, u = torch.randn(3, 4), torch.randn(3, 4)
    w = torch.tensor([0.0, 1.0, 7.5])
    torch.testing.assert_close(apply_guidance(c, u, w), (1 + w[:, None]) * c - w[:, None] * u)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    expected = ((a - b) ** 2 + 1e-6).sqrt().sub(1e-3).mean(1)
    torch.testing.assert_close(pseudo_huber(a, b, 1e-3), expected)
    torch.testing.assert_close(consistency_loss(a, b, "l2"), ((a - b) ** 2).mean(1))
    torch.testing.assert_close(diffusion_loss(a, b), ((a - b) ** 2).mean(1))
    assert pseudo_huber(a, a).abs().max() == 0
    with pytest.raises(ValueError):
        consistency_loss(a, b, "l1")


def test_teacher_free_point_shares_the_noise():
    schedule, x0, noise = NoiseSchedule(), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    t_start, t_end = torch.tensor([19, 500]), torch.tensor([0, 480])
    x_start = schedule.add_noise(x0, noise, t_start)
    point = teacher_free_point(schedule, x0, noise, x_start, t_start, t_end)
    alpha, sigma = schedule.alphas_cumprod[t_end].sqrt(), (1 - schedule.alphas_cumprod[t_end]).sqrt()
    torch.testing.assert_close(point, alpha[:, None, None] * x0 + sigma[:, None, None] * noise)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, c):
        return self.w * x + c


def test_distillation_loss_is_the_direct_computation():
    """Steps 1-6 by hand, with the same random draws, equal the library function."""
    schedule, x0 = NoiseSchedule(), torch.randn(4, 3, 2)
    online, target, teacher = Linear(), Linear(), Linear()
    target.w.data.fill_(0.4)
    teacher.w.data.fill_(0.9)
    context, uncontext, w = torch.full_like(x0, 0.1), torch.zeros_like(x0), torch.tensor([6.0] * 4)

    g = torch.Generator().manual_seed(3)
    t_start, t_end = solver_pair(torch.randint(0, 50, (4,), generator=g), 50)
    noise = torch.randn(x0.shape, generator=g)

    def loss_of(**kwargs):
        return distillation_loss(online=online, target=target, target_point=teacher_ddim_point(teacher, uncontext, w),
                                 schedule=schedule, x0=x0, noise=noise, t_start=t_start, t_end=t_end, context=context,
                                 original_steps=50, loss="huber", **kwargs)
    loss = loss_of()
    a, s = schedule.alphas_cumprod[t_start].sqrt()[:, None, None], (1 - schedule.alphas_cumprod[t_start]).sqrt()[:, None, None]
    x = a * x0 + s * noise
    f_online = consistency_output(schedule, x, 0.5 * x + 0.1, t_start)
    eps_c, eps_u = 0.9 * x + 0.1, 0.9 * x
    x0_c, x0_u = (x - s * eps_c) / a, (x - s * eps_u) / a
    x0_g, eps_g = 7 * x0_c - 6 * x0_u, 7 * eps_c - 6 * eps_u
    an, sn = schedule.alphas_cumprod[t_end].sqrt()[:, None, None], (1 - schedule.alphas_cumprod[t_end]).sqrt()[:, None, None]
    x_end = an * x0_g + sn * eps_g
    f_target = consistency_output(schedule, x_end, 0.4 * x_end + 0.1, t_end)
    torch.testing.assert_close(loss, pseudo_huber(f_online, f_target))
    loss.mean().backward()
    assert online.w.grad is not None and target.w.grad is None and teacher.w.grad is None
    weighted = loss_of(weighting="sqrt_snr")
    torch.testing.assert_close(weighted, loss.detach() * loss_weight(schedule, t_start, "sqrt_snr"))


def test_teacher_free_loss_by_hand():
    """Stage 3's step with no teacher, computed by hand: one scalar sample x0 = 1 at the lowest grid pair
    (19 -> 0), where the target's f is its input whatever the target predicts (c_skip(0) = 1, c_out(0) = 0),
    and an online model that predicts the true noise, so that its x0 estimate is exact."""
    schedule = NoiseSchedule()
    x0 = torch.ones(1, 1)
    abar = schedule.alphas_cumprod
    noise = torch.randn(1, 1, generator=torch.Generator().manual_seed(5))
    t_start, t_end = solver_pair(torch.tensor([0]), 50)  # grid index 0: the lowest pair, 19 -> 0
    x19 = abar[19].sqrt() * x0 + (1 - abar[19]).sqrt() * noise
    x_end = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * noise  # the same noise, at t_n = 0
    c_skip, c_out = 0.25 / (190.0 ** 2 + 0.25), 190.0 / (190.0 ** 2 + 0.25) ** 0.5
    f_online = c_skip * x19 + c_out * x0  # eps_hat = the true noise, so x0_hat = x0
    f_target = x_end  # c_skip(0) = 1, c_out(0) = 0: whatever the target predicts
    expected = ((f_online - f_target) ** 2 + 1e-6).sqrt() - 1e-3

    def true_noise(x, t, c):  # the epsilon that made x from x0 = 1 at timestep t
        a, s = schedule.alpha_sigma(t, x)
        return (x - a * x0) / s
    loss = distillation_loss(online=true_noise, target=lambda x, t, c: torch.full_like(x, 123.0),
                             target_point=teacher_free_point, schedule=schedule, x0=x0, noise=noise, t_start=t_start,
                             t_end=t_end, context=None, original_steps=50)
    assert t_start.tolist() == [19] and t_end.tolist() == [0]
    torch.testing.assert_close(loss, expected.flatten(), rtol=1e-5, atol=1e-7)


def test_the_loops_draws_take_one_number_per_sample_from_its_generator():
    def generators(count=200):
        return [torch.Generator().manual_seed(i) for i in range(count)]
    w = uniform(generators(), 5.0, 15.0)
    assert w.shape == (200,) and 5 <= w.min() and w.max() <= 15 and w.std() > 2
    assert torch.equal(w, uniform(generators(), 5.0, 15.0))  # a sample's draw depends on its generator only
    assert torch.equal(uniform(generators(3), 3.5, 3.5), torch.full((3,), 3.5))  # w_min = w_max: a fixed w
    n = integers(generators(), 50)
    assert n.dtype == torch.int64 and set(n.tolist()) <= set(range(50)) and len(set(n.tolist())) > 40
    noise = normal(generators(), (2, 3))
    assert noise.shape == (200, 2, 3) and abs(noise.std().item() - 1) < 0.1
    assert torch.equal(noise[7], torch.randn((1, 2, 3), generator=torch.Generator().manual_seed(7))[0])
    dropped = coin_flips(generators(), 0.25)
    captions = drop_captions(["c"] * 200, dropped)
    assert 30 < captions.count("") < 70 and set(captions) == {"", "c"}
    assert [c == "" for c in captions] == dropped.tolist()
    assert not coin_flips(generators(5), 0.0).any()


def test_loss_weight_is_one_or_sqrt_snr_with_mean_one_over_the_grid():
    schedule, grid = NoiseSchedule(), ddim_grid(50)
    assert torch.equal(loss_weight(schedule, grid), torch.ones(50))
    weight = loss_weight(schedule, grid, "sqrt_snr")
    abar = schedule.alphas_cumprod[grid]
    torch.testing.assert_close(weight, (abar / (1 - abar)).sqrt() / (abar / (1 - abar)).sqrt().mean())
    assert weight.mean().item() == pytest.approx(1) and (weight.diff() < 0).all()  # small t weigh most
    with pytest.raises(ValueError, match="uniform"):
        loss_weight(schedule, grid, "snr")


def test_ema_moves_every_weight_including_frozen_ones():
    online, target = nn.Linear(3, 3), nn.Linear(3, 3)
    online.requires_grad_(False)  # frozen weights move too (AnimateLCM's target init)
    before = copy.deepcopy(target.state_dict())
    ema_update(target, online, 0.9)
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online.state_dict()[k])


def test_v_weighted_epsilon_loss_is_the_v_prediction_loss():
    """||eps_hat - eps||^2 / abar_t == ||v_hat - v||^2 with v = alpha eps - sigma x0, for the x0 that eps_hat implies."""
    schedule = NoiseSchedule("beta_linear")
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 300, 700, 999])
    x0, eps, eps_hat = (torch.randn(5, 4, 8, 8, generator=g) for _ in range(3))
    x_t = schedule.add_noise(x0, eps, t)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    v, v_hat = alpha * eps - sigma * x0, alpha * eps_hat - sigma * schedule.x0_from_eps(x_t, eps_hat, t)
    v_loss = (v_hat - v).square().flatten(1).mean(1)
    every_t = denoising_weight(schedule, torch.arange(1000), "v")
    assert abs(every_t.mean().item() - 1) < 1e-5 and every_t[-1] > 100 * every_t[0]  # mean 1, high noise first
    scale = (1 / schedule.alphas_cumprod).mean()  # the weight's normalisation
    torch.testing.assert_close(denoising_weight(schedule, t, "v") * scale * diffusion_loss(eps_hat, eps), v_loss,
                               rtol=1e-4, atol=1e-5)
    assert torch.equal(denoising_weight(schedule, t), torch.ones(5))
    # sqrt_v: the geometric mean of the two, each normalised to mean 1 over t
    half = denoising_weight(schedule, torch.arange(1000), "sqrt_v")
    assert abs(half.mean().item() - 1) < 1e-5
    torch.testing.assert_close(half / half[0], (every_t / every_t[0]).sqrt())
    with pytest.raises(ValueError, match="must be one of"):
        denoising_weight(schedule, t, "snr")


def test_denoising_loss_applies_its_weight_per_sample():
    schedule = NoiseSchedule("beta_linear")
    model = lambda x, t, c: x * 0.5  # noqa: E731 - any fixed predictor
    x0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(2))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    plain = denoising_loss(model, schedule, x0, None, noise, t)
    weighted = denoising_loss(model, schedule, x0, None, noise, t, "v")
    torch.testing.assert_close(weighted, plain * denoising_weight(schedule, t, "v"))
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(plain, (0.5 * x_t - noise).square().flatten(1).mean(1))
