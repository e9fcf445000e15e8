"""Schedules and samplers equal diffusers' LCMScheduler, DDIMScheduler and DPMSolverMultistepScheduler."""
import pytest
import torch

from lcm.sampler import (ddim_timesteps, dpmpp_timesteps, keep_last, lcm_step, lcm_timesteps, sample_ddim,
                         sample_dpmpp_2m, sample_lcm)
from lcm.schedule import ALIASES, NoiseSchedule, boundary_scalings, consistency_output

DIFFUSERS_NAME = {"beta_linear": "linear", "sqrt_beta_linear": "scaled_linear"}
STEPS = [1, 2, 4, 8]


def fake_model(x, t):
    """A fixed, deterministic stand-in for the UNet: depends on both x and t."""
    return torch.tanh(0.3 * x + 0.001 * torch.as_tensor(t).float()) + 0.1 * torch.sin(x)


def start(seed=0):
    return torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def close(ours, ref):
    assert (ours - ref).abs().max() <= 1e-6 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("kind", DIFFUSERS_NAME)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("original_steps,beta_end", [(50, 0.012), (100, 0.012), (200, 0.014)])
def test_lcm_equals_diffusers_step_by_step_and_seeded(kind, steps, original_steps, beta_end):
    from diffusers import LCMScheduler
    schedule = NoiseSchedule(kind, beta_end=beta_end)
    ref = LCMScheduler(beta_end=beta_end, beta_schedule=DIFFUSERS_NAME[kind], original_inference_steps=original_steps)
    ref.set_timesteps(steps)
    timesteps = lcm_timesteps(steps, original_steps)
    assert timesteps == ref.timesteps.tolist()
    x_ref, x = start(), start()
    for i, t in enumerate(timesteps):  # each single step, on the same input and noise
        eps, noise = fake_model(x_ref, t), torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        out = ref.step(eps, ref.timesteps[i], x_ref, generator=torch.Generator().manual_seed(i))
        ours, denoised = lcm_step(schedule, eps, t, x_ref, timesteps[i + 1] if i + 1 < steps else None, noise)
        close(denoised, out.denoised)
        close(ours, out.prev_sample)
        x_ref = out.prev_sample
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(7)
    x_ref = start()
    for t in ref.timesteps:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref, generator=g).prev_sample
    close(sample_lcm(fake_model, start(), schedule, timesteps, torch.Generator().manual_seed(7), progress=False), x_ref)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lcm_first_frame_anchor_replaces_frame_0_before_each_renoising(steps):
    """With a known first frame, every later step sees frame 0 as that latent noised to its timestep (the
    same draw as without it), frames 1.. as before at the second step; the result is the model's own."""
    schedule, timesteps = NoiseSchedule("beta_linear"), lcm_timesteps(steps, 50)
    known = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    seen = {"plain": [], "anchored": []}

    def recording(name):
        def model(x, t):
            seen[name].append(x.clone())
            return fake_model(x, t)
        return model

    plain = sample_lcm(recording("plain"), start(), schedule, timesteps, torch.Generator().manual_seed(7),
                       progress=False)
    anchored = sample_lcm(recording("anchored"), start(), schedule, timesteps, torch.Generator().manual_seed(7),
                          progress=False, first_frame=known)
    noises = torch.Generator().manual_seed(7)
    for i in range(1, steps):
        noise = torch.randn(start().shape, generator=noises)
        abar = schedule.alphas_cumprod[timesteps[i]]
        close(seen["anchored"][i][:, :, 0], abar.sqrt() * known + (1 - abar).sqrt() * noise[:, :, 0])
    if steps > 1:
        close(seen["anchored"][1][:, :, 1:], seen["plain"][1][:, :, 1:])
        assert not torch.allclose(anchored, plain)
    else:  # one step: nothing to re-noise, so nothing changes
        close(anchored, plain)
    _, last = lcm_step(schedule, fake_model(seen["anchored"][-1], timesteps[-1]), timesteps[-1],
                       seen["anchored"][-1], None, None)
    close(anchored, last)  # the returned frame 0 is the model's prediction, not the known latent
    assert not torch.allclose(anchored[:, :, 0], known)


def test_lcm_timesteps_match_the_method_table():
    assert lcm_timesteps(4, 100) == [999, 749, 499, 249]
    assert lcm_timesteps(4, 50) == [999, 759, 499, 259]
    assert lcm_timesteps(6, 200) == [999, 834, 669, 499, 334, 169]
    assert lcm_timesteps(8, 100) == [999, 879, 749, 629, 499, 379, 249, 129]


@pytest.mark.parametrize("strength", [0.3, 0.6])
def test_lcm_strength_truncates_the_grid_as_diffusers(strength):
    from diffusers import LCMScheduler
    ref = LCMScheduler(beta_schedule="linear", original_inference_steps=100)
    ref.set_timesteps(4, strength=strength)
    assert lcm_timesteps(4, 100, strength) == ref.timesteps.tolist()
    assert max(lcm_timesteps(4, 100, strength)) < 1000 * strength


@pytest.mark.parametrize("kind", DIFFUSERS_NAME)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("linspace", 0), ("trailing", 0)])
def test_ddim_equals_diffusers(kind, steps, spacing, offset):
    from diffusers import DDIMScheduler
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=DIFFUSERS_NAME[kind], clip_sample=False,
                        steps_offset=offset, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    timesteps = ddim_timesteps(steps, spacing, offset)
    assert timesteps == ref.timesteps.tolist()
    x_ref = start()
    for t in ref.timesteps:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
    close(sample_ddim(fake_model, start(), NoiseSchedule(kind), timesteps, progress=False), x_ref)


@pytest.mark.parametrize("kind", DIFFUSERS_NAME)
@pytest.mark.parametrize("steps", STEPS + [20])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_dpmpp_2m_equals_diffusers(kind, steps, spacing):
    from diffusers import DPMSolverMultistepScheduler
    ref = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=DIFFUSERS_NAME[kind],
                                      timestep_spacing=spacing)
    assert (ref.config.algorithm_type, ref.config.solver_order, ref.config.final_sigmas_type) == \
        ("dpmsolver++", 2, "zero")
    ref.set_timesteps(steps)
    timesteps = dpmpp_timesteps(steps, spacing)
    assert timesteps == ref.timesteps.tolist()
    x_ref = start()
    for t in ref.timesteps:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
    ours = sample_dpmpp_2m(fake_model, start(), NoiseSchedule(kind), timesteps, progress=False)
    assert (ours - x_ref).abs().max() <= 1e-6 * x_ref.abs().max()  # float32 log-SNR arithmetic


def diffusers_kept(ref, steps, strength):
    """The timesteps diffusers' video-to-video (and img2img) pipelines keep, by their own get_timesteps."""
    from types import SimpleNamespace

    from diffusers import AnimateDiffVideoToVideoPipeline
    ref.set_timesteps(steps)
    kept, _ = AnimateDiffVideoToVideoPipeline.get_timesteps(SimpleNamespace(scheduler=ref), steps, ref.timesteps,
                                                            strength, "cpu")
    return kept


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("steps,strength", [(4, 0.5), (4, 0.75), (4, 0.7), (8, 0.6), (3, 0.9), (10, 0.3)])
def test_partial_strength_equals_diffusers_on_the_same_latents(sampler, steps, strength):
    """V2V/SDEdit: the last int(steps * strength) steps, each as in the full schedule (DDIM: its stride)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    if sampler == "ddim":
        ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                            steps_offset=1)
        timesteps = keep_last(ddim_timesteps(steps), strength)
    else:
        ref = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
        timesteps = keep_last(dpmpp_timesteps(steps), strength)
    kept = diffusers_kept(ref, steps, strength)
    assert timesteps == kept.tolist() and len(timesteps) == int(steps * strength)
    source, noise, schedule = start(0), start(1), NoiseSchedule()
    x_ref = ref.add_noise(source, noise, kept[:1])
    for t in kept:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
    x = schedule.add_noise(source, noise, timesteps[0])
    if sampler == "ddim":
        close(sample_ddim(fake_model, x, schedule, timesteps, full_steps=steps, progress=False), x_ref)
    else:
        ours = sample_dpmpp_2m(fake_model, x, schedule, timesteps, progress=False)
        assert (ours - x_ref).abs().max() <= 1e-6 * x_ref.abs().max()


def test_schedule_values_match_the_method_notes():
    abar = NoiseSchedule("beta_linear").alphas_cumprod
    assert [round(abar[t].item(), 4) for t in (249, 499, 749)] == [0.5709, 0.1618, 0.0227]
    abar = NoiseSchedule("sqrt_beta_linear").alphas_cumprod
    assert [round(abar[t].item(), 4) for t in (249, 499, 749)] == [0.6754, 0.2777, 0.0566]
    abar = NoiseSchedule("beta_linear", beta_end=0.014).alphas_cumprod
    assert [round(abar[t].item(), 4) for t in (249, 499, 749)] == [0.5363, 0.1259, 0.0129]
    assert round(NoiseSchedule("beta_linear").alphas_cumprod[999].item(), 5) == 0.00158


def test_ambiguous_schedule_names_are_refused_with_the_mapping():
    with pytest.raises(ValueError, match="diffusers 'linear' is our 'beta_linear'.*CompVis/LDM 'linear' is our "
                                         "'sqrt_beta_linear'"):
        NoiseSchedule("linear")
    assert ALIASES[("diffusers", "scaled_linear")] == "sqrt_beta_linear"


def test_boundary_condition_and_conversions():
    c_skip, c_out = boundary_scalings(torch.tensor(0))
    assert (c_skip.item(), c_out.item()) == (1.0, 0.0)
    c_skip, c_out = boundary_scalings(torch.tensor(999))
    assert c_skip < 1e-7 and abs(c_out - 1) < 1e-7
    schedule, x0, eps = NoiseSchedule(), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(schedule.x0_from_eps(x_t, eps, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(schedule.eps_from_x0(x_t, x0, t), eps, atol=1e-4, rtol=1e-4)
    assert torch.equal(consistency_output(schedule, x_t, eps, torch.tensor([0, 0])), x_t)
