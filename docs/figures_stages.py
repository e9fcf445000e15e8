"""The walkthrough's figures for its sections 6-7 (sampling, AnimateLCM's stages)."""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import torch

from docs.plotting import PROMPTS, Context, cfg_point, image_grid, pixels
from lcm.distill import teacher_free_point
from lcm.ema import ema_update
from lcm.sampler import (ddim_step, ddim_timesteps, lcm_step, lcm_timesteps, sample_ddim,
                         sample_lcm)
from lcm.schedule import consistency_output
from pipeline import guided_model as cfg_model, vae_scale
from toy.evaluate import toy_videos


# ---- 6. sampling: LCM beside DDIM from the same start --------------------------------------------

@torch.no_grad()
def fig_sampler_steps(ctx: Context) -> None:
    toy, s = ctx.toy, ctx.toy.schedule
    lcm_model, teacher = ctx.animatelcm, ctx.teacher
    f = vae_scale(teacher.vae)
    x_T = torch.randn(1, teacher.unet.cfg.in_channels, toy.frames, toy.size // f, toy.size // f,
                      generator=torch.Generator().manual_seed(ctx.seed))
    context, uncontext = teacher.encode_prompts(PROMPTS[:1]), teacher.encode_prompts([""])
    steps = 4
    rows = {"LCM: x at tau_i": [], "LCM: f(x, tau_i)": [], "DDIM: x at t_i": [], "DDIM: x0_hat": []}

    model, timesteps = cfg_model(lcm_model.unet, context, None, 1.0), lcm_timesteps(steps, toy.original_steps)
    x, generator = x_T, torch.Generator().manual_seed(ctx.seed)
    for i, t in enumerate(timesteps):  # lcm/sampler.py:sample_lcm, one step at a time
        last = i == len(timesteps) - 1
        eps = model(x, torch.tensor(t))
        noise = None if last else torch.randn(x.shape, generator=generator)
        rows["LCM: x at tau_i"].append(pixels(lcm_model, x)[0, 0])
        x, denoised = lcm_step(s, eps, t, x, None if last else timesteps[i + 1], noise)
        rows["LCM: f(x, tau_i)"].append(pixels(lcm_model, denoised)[0, 0])
    reference = sample_lcm(model, x_T, s, timesteps, torch.Generator().manual_seed(ctx.seed), progress=False)
    assert torch.allclose(x, reference), "the step-by-step LCM loop left lcm/sampler.py:sample_lcm"

    # DDIM with trailing spacing, from t = 999 as LCM (the leading default would start at 751: section 6)
    model, ddim_ts = cfg_model(teacher.unet, context, uncontext, toy.guidance), ddim_timesteps(steps, "trailing", 0)
    x = x_T
    for t in ddim_ts:  # lcm/sampler.py:sample_ddim, one step at a time
        eps = model(x, torch.tensor(t))
        rows["DDIM: x at t_i"].append(pixels(teacher, x)[0, 0])
        rows["DDIM: x0_hat"].append(pixels(teacher, s.x0_from_eps(x, eps, t))[0, 0])
        x = ddim_step(s, eps, t, x, t - s.steps // steps)
    assert torch.allclose(x, sample_ddim(model, x_T, s, ddim_ts, progress=False, full_steps=steps))
    rows["DDIM: x0_hat"].append(pixels(teacher, x)[0, 0])
    cols = [f"step {i + 1}: tau = {a}, t = {b}" for i, (a, b) in enumerate(zip(timesteps, ddim_ts))] + ["DDIM output"]
    fig = image_grid(list(rows.values()), list(rows), cols,
                     f'"{PROMPTS[0]}" (frame 0), one x_T: AnimateLCM (LCM, g = 1) and the teacher (DDIM, trailing '
                     f'spacing, g = {toy.guidance:g})', cell=1.4)
    ctx.save(fig, "sampler_steps")


@torch.no_grad()
def fig_videos(ctx: Context) -> None:
    toy = ctx.toy
    lcm_steps, image_only, ddim_steps = ((1, 4), (), (4,)) if ctx.quick else ((1, 2, 4, 8), (4,), (4, 50))
    # (label, model, steps, sampler, guidance, spacing): LCM's timesteps have no spacing to choose; the teacher
    # runs DDIM's default, leading (AnimateDiff's config, steps_offset 1: 4 steps start at t = 751)
    rows_spec = [(f"AnimateLCM, {n} step{'s' * (n > 1)}", ctx.animatelcm, n, "lcm", 1.0, None) for n in lcm_steps]
    rows_spec += [(f"image-only LCM, {n} steps", ctx.image_lcm, n, "lcm", 1.0, None) for n in image_only]
    rows_spec += [(f"teacher DDIM, {n} steps, leading", ctx.teacher, n, "ddim", toy.guidance, "leading")
                  for n in ddim_steps]
    rows, labels = [], []
    for label, model, steps, sampler, g, spacing in rows_spec:
        videos = toy_videos(model, PROMPTS, steps, sampler, g, seed=ctx.seed, frames=toy.frames, resolution=toy.size,
                            original_steps=toy.original_steps, schedule=toy.schedule,
                            spacing=spacing)  # [N, 3, F, H, W]
        frames = (videos / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # [N, F, H, W, 3]
        gap = np.ones((toy.size, 4, 3))
        rows.append([np.concatenate(sum([[*video, gap] for video in frames], [])[:-1], 1)])  # one strip
        labels.append(label + (f"\n(AnimateDiff's default), g = {g:g}" if spacing == "leading" else ""))
    title = " | ".join(f'"{p}"' for p in PROMPTS) + f" (frames 0-{toy.frames - 1}), the same noise in every row"
    ctx.save(image_grid(rows, labels, None, title, cell=0.55), "videos")


# ---- 7. AnimateLCM: the stage-2 target's initialisation and teacher-free adaptation --------------

def spatial_fraction(target, base_state: dict, online_state: dict) -> float:
    """|W_target - W_base| / |W_online - W_base| over the weights the LoRA changed."""
    num = den = 0.0
    for name, value in target.state_dict().items():
        delta = online_state[name] - base_state[name]
        if value.is_floating_point() and delta.abs().max() > 0:
            num += float((value - base_state[name]).square().sum())
            den += float(delta.square().sum())
    return (num / den) ** 0.5


@torch.no_grad()
def fig_ema_drift(ctx: Context) -> None:
    toy = ctx.toy
    # measured up to where 1 - mu^n passes 0.999 (at mu = 0.95: 135 updates), not beyond
    mu = toy.ema_decay
    n_max = 10 if ctx.quick else int(np.ceil(np.log(1e-3) / np.log(mu)))
    base, online = ctx.teacher.unet, ctx.image_lcm.unet
    base_state, online_state = base.state_dict(), online.state_dict()
    target = copy.deepcopy(base)  # AnimateLCM's initialisation: the target starts without the LoRA
    measured = [spatial_fraction(target, base_state, online_state)]
    for _ in range(n_max):
        ema_update(target, online, mu)
        measured.append(spatial_fraction(target, base_state, online_state))
    n = np.arange(n_max + 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(n, 1 - mu ** n, label=f"1 - mu^n, mu = {mu:g} (stage 2 of the toy model)")
    ax.plot(range(n_max + 1), measured, "o", ms=3, label="measured: lcm/ema.py:ema_update on the toy UNet")
    if toy.stage2_steps <= n_max:
        ax.axvline(toy.stage2_steps, color="grey", ls=":", label=f"the toy stage 2's {toy.stage2_steps} updates")
    else:
        ax.text(0.98, 0.05, f"the toy stage 2 makes {toy.stage2_steps} updates: 1 - mu^n = 1 - "
                f"{mu ** toy.stage2_steps:.0e}", transform=ax.transAxes, ha="right", fontsize=8)
    ax.set(xlabel="EMA updates n", ylabel="share of the LoRA in the target",
           title="the target's spatial weights: W0 + (1 - mu^n) dW")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save(fig, "ema_drift")


@torch.no_grad()
def fig_init_target(ctx: Context) -> None:
    """What the stage-2 target hands the loss on the teacher's guided DDIM point, for one real clip at two
    noise levels: AnimateLCM's initialisation (the teacher's network) against the plain one (the online
    model: teacher + stage-1 LoRA) at the first update, and the shipped model. Frames 0 and F-1 side by side."""
    toy, s = ctx.toy, ctx.toy.schedule
    x0, captions = ctx.clips(1, seed_offset=3)
    eps = ctx.noise(x0, 3)
    teacher = ctx.teacher
    context, uncontext = teacher.encode_prompts(captions), teacher.encode_prompts([""])
    targets = [("AnimateLCM init\n(no LoRA), n = 0", teacher.unet), ("plain init\n(+ LoRA), n = 0", ctx.image_lcm.unet),
               ("the shipped\nAnimateLCM", ctx.animatelcm.unet)]
    w = (toy.w_min + toy.w_max) / 2

    def ends(video: np.ndarray) -> np.ndarray:  # frames 0 and F-1 side by side
        gap = np.ones((video.shape[1], 2, 3))
        return np.concatenate([video[0], gap, video[-1]], 1)
    rows, labels = [], []
    for q in (0.7,) if ctx.quick else (0.7, 0.3):
        start, end = ctx.grid_point(q)
        x_start = s.add_noise(x0, eps, torch.tensor([start]))
        _, _, x0_g, x_end = cfg_point(ctx, teacher.unet, x_start, start, end, context, uncontext, w)
        tt = torch.tensor([end])
        row = [ends(pixels(teacher, x0)[0]), ends(pixels(teacher, x0_g)[0])]
        for _, unet in targets:  # f_theta-(x_hat_(t_n), c, t_n): what the loss pulls the student to
            row.append(ends(pixels(teacher, consistency_output(s, x_end, unet(x_end, tt, context), tt))[0]))
        rows.append(row)
        labels.append(f"t_(n+k) = {start}\nt_n = {end}")
    cols = ["clean clip", f"teacher's x0_hat, w = {w:g}", *(label for label, _ in targets)]
    fig = image_grid(rows, labels, cols, f'the stage-2 target f(x_hat_(t_n), t_n) on "{captions[0]}" (frames 0 and '
                                         f'{toy.frames - 1})', cell=1.5)
    ctx.save(fig, "init_target")


@torch.no_grad()
def fig_teacher_free(ctx: Context) -> None:
    toy, s = ctx.toy, ctx.toy.schedule
    teacher = ctx.teacher
    count = 1 if ctx.quick else 8
    x0, captions = ctx.clips(count, seed_offset=4)
    eps = ctx.noise(x0, 4)
    context, uncontext = teacher.encode_prompts(captions), teacher.encode_prompts([""] * count)
    w = (toy.w_min + toy.w_max) / 2

    def points(start: int):
        """x_(t_n+k), then the teacher's DDIM point with guidance w and 0, and the teacher-free point."""
        end = max(start - s.steps // toy.original_steps, 0)
        x_start = s.add_noise(x0, eps, torch.full((count,), start))
        guided_end, plain_end = (cfg_point(ctx, teacher.unet, x_start, start, end, context, uncontext, weight)[3]
                                 for weight in (w, 0.0))
        free = teacher_free_point(s, x0, eps, x_start, torch.full((count,), start), torch.full((count,), end))
        return end, x_start, guided_end, plain_end, free

    curve, gaps = ctx.grid()[:: 25 if ctx.quick else 2].tolist(), {w: [], 0.0: []}
    for start in curve:
        end, _, guided_end, plain_end, free = points(start)
        for weight, x_end in ((w, guided_end), (0.0, plain_end)):
            gaps[weight].append(float((x_end - free).square().mean().sqrt()))
    rows, labels = [], []
    target = ctx.animatelcm.unet  # the frozen video consistency model that stage 3's target wraps
    for q in (0.8, 0.2) if ctx.quick else (0.8, 0.5, 0.2):
        start = ctx.grid_point(q)[0]
        end, x_start, x_end, _, free = points(start)
        tt = torch.full((count,), end)
        f_teacher, f_free = (consistency_output(s, z, target(z, tt, context), tt) for z in (x_end, free))
        diff = (x_end - free)[0, :, 0].abs().mean(0).numpy()  # first clip, frame 0, mean over channels
        rows.append([pixels(teacher, z[:1])[0, 0] for z in (x_start, x_end, free)] + [diff] +
                    [pixels(teacher, z[:1])[0, 0] for z in (f_teacher, f_free)])
        labels.append(f"t_(n+k) = {start}\nt_n = {end}")
    cols = ["x_(t_n+k)", f"teacher's point, w = {w:g}", "teacher-free point", "|difference| (latent)",
            "f at teacher's point", "f at teacher-free point"]
    vmax = max(float(row[3].max()) for row in rows)  # the difference maps share one scale
    ctx.save(image_grid(rows, labels, cols, f'"{captions[0]}" (frame 0); f: the shipped AnimateLCM', cell=1.3,
                        vmax=vmax),
             "teacher_free")

    fig, ax = plt.subplots(figsize=(6.5, 3.3))
    for weight, values in gaps.items():
        ax.semilogy(curve, values, ".-", ms=4, label=f"RMS gap, teacher with guidance w = {weight:g}")
    ax.semilogy(curve, [float(s.alpha_sigma(max(t - s.steps // toy.original_steps, 0))[1]) for t in curve], "k:",
                label="sigma_(t_n), the noise level there")
    ax.set(xlabel="t_(n+k)", title=f"teacher's point vs the one-sample point ({count} real clips)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save(fig, "teacher_free_gap")
