"""The walkthrough's figures for its sections 1-5: the forward process, the consistency function, the
solver grid and the teacher's step, the loss, f along the teacher's trajectory."""
from __future__ import annotations


import matplotlib.pyplot as plt
import torch

from docs.plotting import PROMPTS, Context, cfg_point, image_grid, pixels
from lcm.distill import LOSS_WEIGHTS, distillation_loss, loss_weight, solver_pair, teacher_ddim_point, teacher_free_point
from lcm.sampler import ddim_step, ddim_timesteps, dpmpp_timesteps, lcm_timesteps
from lcm.schedule import NoiseSchedule, boundary_scalings, consistency_output
from pipeline import guided_model as cfg_model, vae_scale
from runtime.draws import integers, normal


# ---- 1. the forward process and the x0 / eps views ----------------------------------------------

def fig_schedule(ctx: Context) -> None:
    toy, t = ctx.toy.schedule, torch.arange(ctx.toy.schedule.steps)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    for kind, style in (("beta_linear", "-"), ("sqrt_beta_linear", "--")):
        alpha, sigma = NoiseSchedule(kind, toy.beta_start, toy.beta_end, toy.steps).alpha_sigma(t)
        mark = " (toy model)" if kind == toy.kind else ""
        axes[0].plot(t, alpha, style, color="C0", label=f"alpha_t, {kind}{mark}")
        axes[0].plot(t, sigma, style, color="C1", label=f"sigma_t, {kind}{mark}")
        axes[1].semilogy(t, (alpha / sigma) ** 2, style, color="C2", label=f"{kind}{mark}")
    axes[0].set(xlabel="t", title="x_t = alpha_t x0 + sigma_t eps")
    axes[1].set(xlabel="t", title="signal-to-noise ratio alpha_t^2 / sigma_t^2")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ctx.save(fig, "schedule")


@torch.no_grad()
def fig_forward_process(ctx: Context) -> None:
    s, unet = ctx.toy.schedule, ctx.teacher.unet
    x0, captions = ctx.clips(1 if ctx.quick else 16)
    eps = ctx.noise(x0)
    context = ctx.teacher.encode_prompts(captions)
    grid = ctx.grid()
    shown = [int(grid[max(0, round(q * len(grid)) - 1)]) for q in (0.02, 0.2, 0.4, 0.6, 0.8, 1.0)]
    curve = sorted(set(grid[:: 25 if ctx.quick else 1].tolist()) | set(shown))
    rows = {"x_t": [], "x0 view": [], "eps view (ch. 0)": [], "true eps (ch. 0)": []}
    err_x0, err_eps = [], []
    for t in curve:
        tt = torch.full((x0.shape[0],), t)
        x_t = s.add_noise(x0, eps, tt)
        eps_hat = unet(x_t, tt, context)
        x0_hat = s.x0_from_eps(x_t, eps_hat, tt)
        err_x0.append(float((x0_hat - x0).square().mean()))
        err_eps.append(float((eps_hat - eps).square().mean()))
        if t in shown:  # the first clip's first frame
            rows["x_t"].append(pixels(ctx.teacher, x_t[:1])[0, 0])
            rows["x0 view"].append(pixels(ctx.teacher, x0_hat[:1])[0, 0])
            rows["eps view (ch. 0)"].append(eps_hat[0, 0, 0].numpy())
            rows["true eps (ch. 0)"].append(eps[0, 0, 0].numpy())
    fig = image_grid(list(rows.values()), list(rows), [f"t = {t}" for t in shown],
                     f'teacher on "{captions[0]}" (frame 0)')
    ctx.save(fig, "forward_process")

    fig, ax = plt.subplots(figsize=(6, 3.3))
    ax.semilogy(curve, err_x0, "o-", ms=3, label="x0 view: mean (x0_hat - x0)^2")
    ax.semilogy(curve, err_eps, "s-", ms=3, label="eps view: mean (eps_hat - eps)^2")
    ax.set(xlabel="t", title=f"the teacher's two views of one prediction ({x0.shape[0]} real clips)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save(fig, "prediction_error")


# ---- 2. the consistency function's boundary condition --------------------------------------------

def fig_boundary(ctx: Context) -> None:
    t = torch.arange(ctx.toy.schedule.steps, dtype=torch.float64)  # float64: 1 - c_out is tiny
    c_skip, c_out = boundary_scalings(t)
    grid = ctx.grid()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    near = t <= 3 * int(grid[0]) + 3
    axes[0].plot(t[near], c_skip[near], ".-", label="c_skip(t)")
    axes[0].plot(t[near], c_out[near], ".-", label="c_out(t)")
    for g in [0, *grid[grid <= t[near].max()].tolist()]:
        axes[0].axvline(g, color="grey", lw=0.6, ls=":")
    axes[0].set(xlabel="t (dotted: the solver grid's nodes and t = 0)", title="f(x, t) = c_skip x + c_out x0_hat")
    axes[1].loglog(t[1:], c_skip[1:], label="c_skip(t)")
    axes[1].loglog(t[1:], 1 - c_out[1:], label="1 - c_out(t)")
    axes[1].set(xlabel="t", title="how fast f becomes the plain x0 prediction")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ctx.save(fig, "boundary")


# ---- 3. the solver grid and one teacher step with guidance ---------------------------------------

def fig_solver_grid(ctx: Context) -> None:
    toy, grid = ctx.toy, ctx.grid()
    rows = [(f"solver grid, {toy.original_steps} points", grid.tolist())]
    rows += [(f"LCM, {n} step{'s' * (n > 1)}", lcm_timesteps(n, toy.original_steps)) for n in (1, 2, 4, 8)]
    rows += [("LCM, 4 steps, original_steps 100", lcm_timesteps(4, 100)),
             ("DDIM, 1 step, leading (AnimateDiff's default)", ddim_timesteps(1)),
             ("DDIM, 4 steps, leading (AnimateDiff's default)", ddim_timesteps(4)),
             ("DDIM, 1 step, trailing", ddim_timesteps(1, "trailing", 0)),
             ("DDIM, 4 steps, trailing", ddim_timesteps(4, "trailing", 0)),
             ("DPM-Solver++, 4 steps, linspace", dpmpp_timesteps(4))]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    for y, (label, ts) in enumerate(reversed(rows)):
        ax.plot(ts, [y] * len(ts), "o", ms=4 if y < len(rows) - 1 else 2.5)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    y = len(rows) - 1
    for q in (0.5, 0.02):  # two pairs (t_(n+k), t_n): one teacher DDIM step each; the lowest ends at t = 0
        start, end = ctx.grid_point(q)
        ax.plot([start, end], [y, y], "o", color="C3", ms=4)
        ax.annotate("", xy=(end, y + 0.3), xytext=(start, y + 0.3), arrowprops={"arrowstyle": "->", "color": "C3"})
        ax.text(start, y + 0.42, f"{start} -> {end}", fontsize=7, ha="center", color="C3")
    ax.set(xlabel="timestep t", xlim=(-20, toy.schedule.steps + 20), ylim=(-0.7, len(rows)))
    ax.grid(axis="x", alpha=0.3)
    ctx.save(fig, "solver_grid")


@torch.no_grad()
def fig_teacher_step(ctx: Context) -> None:
    toy, s, model = ctx.toy, ctx.toy.schedule, ctx.teacher
    x0, captions = ctx.clips(1, seed_offset=1)
    x0 = x0[:, :, 0]  # a still: stage 1's view, the image teacher (motion modules skip 4-D input)
    eps = ctx.noise(x0, 1)
    context, uncontext = model.encode_prompts(captions), model.encode_prompts([""])
    rows, labels = [], []
    for q in (0.8, 0.5, 0.2):
        start, end = ctx.grid_point(q)
        x_start = s.add_noise(x0, eps, torch.tensor([start]))
        x0_c, x0_u, x0_lo, _ = cfg_point(ctx, model.unet, x_start, start, end, context, uncontext, toy.w_min)
        _, _, x0_hi, x_end = cfg_point(ctx, model.unet, x_start, start, end, context, uncontext, toy.w_max)
        free = teacher_free_point(s, x0, eps, x_start, torch.tensor([start]), torch.tensor([end]))
        images = [x0, x_start, x0_u, x0_c, x0_lo, x0_hi, x_end, free]
        rows.append([pixels(model, z)[0] for z in images])
        labels.append(f"t_(n+k) = {start}\nt_n = {end}")
    cols = ["x0 (clean)", "x_(t_n+k)", "x0_hat uncond", "x0_hat cond", f"guided, w = {toy.w_min:g}",
            f"guided, w = {toy.w_max:g}", f"x_hat_(t_n), w = {toy.w_max:g}", "teacher-free x_(t_n)"]
    ctx.save(image_grid(rows, labels, cols, f'one teacher step on "{captions[0]}" (a still)'), "teacher_step")


# ---- 4. online model, target and the loss with its time weight ----------------------------------

@torch.no_grad()
def fig_loss_weighting(ctx: Context) -> None:
    toy, s = ctx.toy, ctx.toy.schedule
    grid = ctx.grid()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for kind in LOSS_WEIGHTS:
        mark = " (stage 1 of the toy model)" if kind == toy.loss_weight else ""
        axes[0].semilogy(grid, loss_weight(s, grid, kind, toy.original_steps), ".-", ms=3, label=kind + mark)
    axes[0].set(xlabel="t_(n+k)", title="lambda_n, mean 1 over the grid")

    count = 16 if ctx.quick else 400
    x0, captions = ctx.clips(count, seed_offset=2)
    x0 = x0[:, :, 0]  # stills, as stage 1 trains on
    context = ctx.teacher.encode_prompts(captions)
    uncontext = ctx.teacher.encode_prompts([""] * count)
    w = toy.w_min + (toy.w_max - toy.w_min) * torch.rand(count, generator=torch.Generator().manual_seed(ctx.seed))
    teacher = ctx.teacher.unet
    for name, online in (("before stage 1 (student = teacher)", teacher),
                         ("after stage 1 (the shipped LoRA)", ctx.image_lcm.unet)):
        generators = [torch.Generator().manual_seed(ctx.seed * 100_000 + i) for i in range(count)]
        t, t_end = solver_pair(integers(generators, toy.original_steps), toy.original_steps)
        # stage 1's target is the online model itself (the LCM-LoRA recipe): target = online
        loss = distillation_loss(online=online, target=online, target_point=teacher_ddim_point(teacher, uncontext, w),
                                 schedule=s, x0=x0, noise=normal(generators, x0.shape[1:]), t_start=t, t_end=t_end,
                                 context=context, original_steps=toy.original_steps, loss=toy.loss,
                                 weighting=toy.loss_weight)
        plain = loss / loss_weight(s, t, toy.loss_weight, toy.original_steps)
        ts = sorted(set(t.tolist()))
        axes[1].semilogy(ts, [float(plain[t == v].mean()) for v in ts], ".-", ms=4, label=f"d, {name}")
        if online is not teacher:
            axes[1].semilogy(ts, [float(loss[t == v].mean()) for v in ts], ".:", ms=4,
                             label=f"lambda_n * d ({toy.loss_weight}), {name}")
    axes[1].set(xlabel="t_(n+k)", title=f"{toy.loss} distance per grid point ({count} stills, w ~ "
                                        f"U[{toy.w_min:g}, {toy.w_max:g}])")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ctx.save(fig, "loss_weighting")




# ---- 5. why it works: f is constant along the teacher's trajectory -------------------------------

@torch.no_grad()
def fig_trajectory(ctx: Context) -> None:
    """Stills (the image teacher, and the same UNet with the stage-1 LoRA: the image consistency model).
    From one x_T per prompt, the teacher's guided DDIM trajectory over the 50-point solver grid, at the
    middle of the guidance range the student was distilled on. At each of its points x_t: the teacher's
    own x0 estimate and the consistency model's f(x_t, t), each as its RMS distance (latent) to where the
    trajectory ends."""
    toy, s = ctx.toy, ctx.toy.schedule
    teacher, student = ctx.teacher, ctx.image_lcm
    count = 2 if ctx.quick else 16
    captions = [PROMPTS[i % len(PROMPTS)] if ctx.quick else c for i, c in enumerate(ctx.clips(count, 5)[1])]
    context, uncontext = teacher.encode_prompts(captions), teacher.encode_prompts([""] * count)
    h = toy.size // vae_scale(teacher.vae)
    x = torch.randn(count, teacher.unet.cfg.in_channels, h, h, generator=torch.Generator().manual_seed(ctx.seed))
    g = 1 + (toy.w_min + toy.w_max) / 2
    model = cfg_model(teacher.unet, context, uncontext, g)
    timesteps = ddim_timesteps(toy.original_steps, "trailing", 0)  # 999, 979, ..., 19: the solver grid
    visited, estimates, consistent = [], [], []
    for t in timesteps:
        eps = model(x, torch.tensor(t))
        visited.append(x)
        estimates.append(s.x0_from_eps(x, eps, t))
        consistent.append(consistency_output(s, x, student.unet(x, torch.tensor(t), context), torch.tensor(t)))
        x = ddim_step(s, eps, t, x, t - s.steps // toy.original_steps)
    end = x

    def rms(zs):
        return [float((z - end).square().mean((1, 2, 3)).sqrt().mean()) for z in zs]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.plot(timesteps, rms(estimates), "o-", ms=3, label=f"the teacher's x0_hat(x_t) (g = {g:g})")
    ax.plot(timesteps, rms(consistent), "s-", ms=3, label="the consistency model's f(x_t, t)")
    ax.set(xlabel="t along the trajectory (from x_T at the right)", ylabel="RMS distance to the trajectory's end",
           title=f"one guided DDIM trajectory per prompt ({count} stills)", ylim=(0, None))
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save(fig, "trajectory")
    shown = [i for i, t in enumerate(timesteps) if t in (999, 759, 499, 259, 19)] or [0, len(timesteps) - 1]
    rows = [[pixels(teacher, z[:1])[0] for z in [visited[i] for i in shown] + [end]],
            [pixels(teacher, z[:1])[0] for z in [estimates[i] for i in shown]],
            [pixels(teacher, z[:1])[0] for z in [consistent[i] for i in shown]]]
    cols = [f"t = {timesteps[i]}" for i in shown] + ["the end"]
    fig = image_grid(rows, ["x_t (decoded)", "teacher's x0_hat", "f(x_t, t)"], cols, f'"{captions[0]}"', cell=1.3)
    ctx.save(fig, "trajectory_images")
