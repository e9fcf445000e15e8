"""Every figure of docs/consistency-distillation.md and docs/toy-world.md, drawn from the shipped toy model.

    python -m docs.figures                          # all figures into docs/figures/
    python -m docs.figures --only sampler_steps     # one figure (names: --help)
    python -m docs.figures --quick --out /tmp/figs  # few samples and steps (tests/test_docs.py runs this)
    python -m docs.figures --weights runs/toy_ship  # another toy run's shipped folder (toy/run.py --ship-to)

Everything comes from the weight files in --weights and their metadata (noise schedule, solver grid,
guidance range, loss, EMA rate and step count of each stage), toy.json (the teacher's guidance) and
results.json (the toy run's evaluation, which `toy/run.py --ship` copies there): after the toy world
is retrained, run this again. No result is written in here.
Plots need matplotlib (requirements-dev.txt); nothing outside docs/ imports it.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from lcm.distill import (LOSS_WEIGHTS, ddim_grid, ddim_solver_step, distillation_loss, guided,  # noqa: E402
                         loss_weight, teacher_ddim_point, teacher_free_point)
from lcm.ema import ema_update  # noqa: E402
from lcm.sampler import (ddim_step, ddim_timesteps, dpmpp_timesteps, lcm_step, lcm_timesteps, sample_ddim,  # noqa: E402
                         sample_lcm)
from lcm.schedule import NoiseSchedule, boundary_scalings, consistency_output  # noqa: E402
from pipeline import guided as cfg_model, vae_scale  # noqa: E402
from sd15 import load_sd15  # noqa: E402
from toy.classifier import to_model  # noqa: E402
from toy.evaluate import toy_videos  # noqa: E402
from toy.world import sample_videos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["a red circle moving left", "a blue square moving up"]  # inputs for the sampling figures


# ---- the toy model: settings from its files, models loaded on first use --------------------------

@dataclass
class Toy:
    schedule: NoiseSchedule
    original_steps: int   # the DDIM solver grid of stages 1 and 2
    w_min: float          # stage 1's guidance range in the LCM form (1 + w) c - w u
    w_max: float
    loss: str             # stage 1's distance and time weight
    loss_weight: str
    ema_decay: float      # stage 2's target EMA rate and its number of updates
    stage2_steps: int
    guidance: float       # the teacher's classifier-free guidance g when it samples (toy.json)
    lora_scale: float
    frames: int
    size: int


def metadata(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def read_toy(weights: Path) -> Toy:
    lora, motion = metadata(weights / "toy_lcm_lora.safetensors"), metadata(weights / "toy_motion.safetensors")
    stage1, stage2 = json.loads(lora["settings"]), json.loads(motion["settings"])
    shipped = json.loads((weights / "toy.json").read_text())
    return Toy(NoiseSchedule(**json.loads(lora["schedule"])), stage1["original_steps"], stage1["w_min"],
               stage1["w_max"], stage1["loss"], stage1["loss_weight"], stage2["ema_decay"], int(motion["step"]),
               shipped["guidance_teacher"], shipped["lora_scale"], shipped["frames"], shipped["height"])


class Context:
    def __init__(self, weights: Path, out: Path, quick: bool, seed: int):
        self.weights, self.out, self.quick, self.seed = weights, out, quick, seed
        self.toy = read_toy(weights)

    def load(self, motion: str, lora: bool):
        w = self.weights
        return load_sd15(w / "toy_sd15.safetensors", w / motion,
                         [(w / "toy_lcm_lora.safetensors", self.toy.lora_scale)] if lora else [])

    @cached_property
    def teacher(self):      # SD1.5-layout teacher + its motion module (stage 2's teacher; spatially stage 1's)
        return self.load("toy_teacher_motion.safetensors", lora=False)

    @cached_property
    def image_lcm(self):    # + the stage-1 LoRA, merged (the online model when stage 2 starts)
        return self.load("toy_teacher_motion.safetensors", lora=True)

    @cached_property
    def animatelcm(self):   # + the stage-2 motion module: the video consistency model
        return self.load("toy_motion.safetensors", lora=True)

    def grid(self) -> torch.Tensor:
        return ddim_grid(self.toy.original_steps, self.toy.schedule.steps)

    def grid_point(self, q: float) -> tuple[int, int]:
        """(t_{n+k}, t_n) at a fraction q of the grid."""
        grid = self.grid()
        start = int(grid[max(0, round(q * len(grid)) - 1)])
        return start, max(start - self.toy.schedule.steps // self.toy.original_steps, 0)

    def clips(self, count: int, seed_offset: int = 0):
        """Real toy clips: scaled latents [N, 4, F, h, w] (posterior means) and their captions."""
        videos, _, clips = sample_videos(count, 10_000 + self.seed + seed_offset, frames=self.toy.frames,
                                         resolution=self.toy.size)
        x0 = self.teacher.vae.encode_video(to_model(videos), sample=False)
        return x0, [c.caption for c in clips]

    def noise(self, like: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return torch.randn(like.shape, generator=torch.Generator().manual_seed(self.seed + offset))

    def save(self, fig, name: str) -> None:
        fig.savefig(self.out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)


def pixels(model, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents [B, 4, F, h, w] or [B, 4, h, w] -> RGB in [0, 1], [B, (F,) H, W, 3]."""
    vae = model.vae
    if latents.dim() == 5:
        return (vae.decode_video(latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
    return (vae.decode(latents / vae.cfg.scaling_factor) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str] | None = None,
               title: str = "", cell: float = 1.15):
    """A figure of images, one list per row: RGB, or 2-D maps (grey around 0 if signed, else magma)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    aspects = [max(r[j].shape[1] / r[j].shape[0] for r in rows if j < len(r)) for j in range(n_cols)]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * sum(aspects) + 2.4, cell * n_rows + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": aspects})
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            image = row[j]
            if image.ndim == 2 and image.min() < 0:
                limit = max(float(np.abs(image).max()), 1e-6)
                ax.imshow(image, cmap="gray", vmin=-limit, vmax=limit, interpolation="nearest")
            elif image.ndim == 2:
                ax.imshow(image, cmap="magma", vmin=0, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            if col_labels and i == 0:
                ax.set_title(col_labels[j], fontsize=8)
        axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def cfg_point(ctx: Context, unet, x: torch.Tensor, t: int, t_end: int, context, uncontext, w):
    """The teacher's half of a distillation step: x0 and eps with guidance w, one DDIM step to t_end
    (lcm/distill.py:distillation_loss, step 4). Returns (x0 cond, x0 uncond, x0 guided, x_{t_n})."""
    s = ctx.toy.schedule
    tt = torch.full((x.shape[0],), t)
    eps_c, eps_u = unet(x, tt, context), unet(x, tt, uncontext)
    x0_c, x0_u = s.x0_from_eps(x, eps_c, tt), s.x0_from_eps(x, eps_u, tt)
    x0_g = guided(x0_c, x0_u, w)
    return x0_c, x0_u, x0_g, ddim_solver_step(s, x0_g, guided(eps_c, eps_u, w), torch.full((x.shape[0],), t_end))


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
    rows += [("LCM, 4 steps, original_steps 100", lcm_timesteps(4, 100)), ("DDIM, 4 steps", ddim_timesteps(4)),
             ("DPM-Solver++, 4 steps", dpmpp_timesteps(4))]
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
        # stage 1's target is the online model itself (the LCM-LoRA recipe): target = online
        loss, t = distillation_loss(online=online, target=online, target_point=teacher_ddim_point(teacher, uncontext, w),
                                    schedule=s, x0=x0, context=context, original_steps=toy.original_steps,
                                    loss=toy.loss, weighting=toy.loss_weight, generators=generators)
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


# ---- 5. sampling: LCM beside DDIM from the same start --------------------------------------------

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

    model, ddim_ts = cfg_model(teacher.unet, context, uncontext, toy.guidance), ddim_timesteps(steps)
    x = x_T
    for t in ddim_ts:  # lcm/sampler.py:sample_ddim, one step at a time
        eps = model(x, torch.tensor(t))
        rows["DDIM: x at t_i"].append(pixels(teacher, x)[0, 0])
        rows["DDIM: x0_hat"].append(pixels(teacher, s.x0_from_eps(x, eps, t))[0, 0])
        x = ddim_step(s, eps, t, x, t - s.steps // steps)
    assert torch.allclose(x, sample_ddim(model, x_T, s, ddim_ts, progress=False))
    rows["DDIM: x0_hat"].append(pixels(teacher, x)[0, 0])
    cols = [f"step {i + 1}: tau = {a}, t = {b}" for i, (a, b) in enumerate(zip(timesteps, ddim_ts))] + ["DDIM output"]
    fig = image_grid(list(rows.values()), list(rows), cols,
                     f'"{PROMPTS[0]}" (frame 0), one x_T: AnimateLCM (LCM, g = 1) and the teacher (DDIM, '
                     f'g = {toy.guidance:g})', cell=1.4)
    ctx.save(fig, "sampler_steps")


@torch.no_grad()
def fig_videos(ctx: Context) -> None:
    toy = ctx.toy
    lcm_steps, image_only, ddim_steps = ((1, 4), (), (4,)) if ctx.quick else ((1, 2, 4, 8), (4,), (4, 50))
    rows_spec = [(f"AnimateLCM, {n} step{'s' * (n > 1)}", ctx.animatelcm, n, "lcm", 1.0) for n in lcm_steps]
    rows_spec += [(f"image-only LCM, {n} steps", ctx.image_lcm, n, "lcm", 1.0) for n in image_only]
    rows_spec += [(f"teacher DDIM, {n} steps", ctx.teacher, n, "ddim", toy.guidance) for n in ddim_steps]
    rows, labels = [], []
    for label, model, steps, sampler, g in rows_spec:
        videos = toy_videos(model, PROMPTS, steps, sampler, g, seed=ctx.seed, frames=toy.frames, resolution=toy.size,
                            original_steps=toy.original_steps, schedule=toy.schedule)  # [N, 3, F, H, W]
        frames = (videos / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # [N, F, H, W, 3]
        gap = np.ones((toy.size, 4, 3))
        rows.append([np.concatenate(sum([[*video, gap] for video in frames], [])[:-1], 1)])  # one strip
        labels.append(label + (f", g = {g:g}" if sampler == "ddim" else ""))
    title = " | ".join(f'"{p}"' for p in PROMPTS) + f" (frames 0-{toy.frames - 1}), the same noise in every row"
    ctx.save(image_grid(rows, labels, None, title, cell=0.55), "videos")


# ---- 6. AnimateLCM: the stage-2 target's initialisation and teacher-free adaptation --------------

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
    mu, n_max = toy.ema_decay, 10 if ctx.quick else max(60, 3 * toy.stage2_steps)
    base, online = ctx.teacher.unet, ctx.image_lcm.unet
    base_state, online_state = base.state_dict(), online.state_dict()
    target = copy.deepcopy(base)  # AnimateLCM's initialisation: the target starts without the LoRA
    measured = [spatial_fraction(target, base_state, online_state)]
    for _ in range(n_max):
        ema_update(target, online, mu)
        measured.append(spatial_fraction(target, base_state, online_state))
    n = np.arange(max(n_max, 4 * toy.stage2_steps) + 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(n, 1 - mu ** n, label=f"1 - mu^n, mu = {mu:g} (stage 2 of the toy model)")
    ax.plot(range(n_max + 1), measured, "o", ms=3, label="measured: lcm/ema.py:ema_update on the toy UNet")
    ax.axvline(toy.stage2_steps, color="grey", ls=":", label=f"the toy stage 2's {toy.stage2_steps} updates")
    ax.set(xlabel="EMA updates n", ylabel="share of the LoRA in the target",
           title="the target's spatial weights: W0 + (1 - mu^n) dW")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save(fig, "ema_drift")


@torch.no_grad()
def fig_init_target(ctx: Context) -> None:
    toy, s = ctx.toy, ctx.toy.schedule
    x0, captions = ctx.clips(1, seed_offset=3)
    eps = ctx.noise(x0, 3)
    teacher = ctx.teacher
    context, uncontext = teacher.encode_prompts(captions), teacher.encode_prompts([""])
    drifted = copy.deepcopy(teacher.unet)
    for _ in range(toy.stage2_steps):  # the spatial part's drift only: the motion modules stay the teacher's
        ema_update(drifted, ctx.image_lcm.unet, toy.ema_decay)
    targets = [("target, AnimateLCM init, n = 0", teacher.unet),
               (f"target, AnimateLCM init, n = {toy.stage2_steps}\n(spatial drift only)", drifted),
               ("target, plain init, n = 0", ctx.image_lcm.unet),
               ("shipped AnimateLCM", ctx.animatelcm.unet)]
    w = (toy.w_min + toy.w_max) / 2
    rows, labels = [list(pixels(teacher, x0)[0])], ["clean clip"]
    for q in (0.7,) if ctx.quick else (0.7, 0.3):
        start, end = ctx.grid_point(q)
        x_start = s.add_noise(x0, eps, torch.tensor([start]))
        _, _, x0_g, x_end = cfg_point(ctx, teacher.unet, x_start, start, end, context, uncontext, w)
        rows.append(list(pixels(teacher, x0_g)[0]))
        labels.append(f"teacher x0_hat at {start}, w = {w:g}")
        tt = torch.tensor([end])
        for label, unet in targets:  # f_theta-(x_hat_(t_n), c, t_n): what the loss pulls the student to
            rows.append(list(pixels(teacher, consistency_output(s, x_end, unet(x_end, tt, context), tt))[0]))
            labels.append(f"{label}: f at t_n = {end}")
    fig = image_grid(rows, labels, [f"frame {i}" for i in range(toy.frames)],
                     f'the stage-2 target on "{captions[0]}"', cell=0.9)
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
    ctx.save(image_grid(rows, labels, cols, f'"{captions[0]}" (frame 0); f: the shipped AnimateLCM', cell=1.3),
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


# ---- the toy world's results (docs/toy-world.md, README) -----------------------------------------

def fig_toy_results(ctx: Context) -> None:
    """Toy FVD and seen-prompt accuracy against steps, from seeds.json (toy/seeds.py --ship): each distilled
    method's mean and std over its training seeds; the teacher is trained once, so its bars are the
    sampling spread."""
    results = json.loads((ctx.weights / "seeds.json").read_text())
    rows = results["table"]
    many = max(r["steps"] for r in rows)  # the teacher's many-step reference row
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        few = sorted((r for r in rows if r["method"] == method and r["steps"] < many), key=lambda r: r["steps"])
        ref = [r for r in rows if r["method"] == method and r["steps"] == many]
        spread = "std" if few[0]["seeds"] > 1 else "sampling_std"
        for ax, metric in zip(axes, ("fvd", "seen_accuracy")):
            ax.errorbar([r["steps"] for r in few], [r[metric]["mean"] for r in few],
                        [r[metric][spread] for r in few], fmt="o-", ms=4, capsize=3, color=f"C{i}", label=method)
            for r in ref:
                ax.axhline(r[metric]["mean"], color=f"C{i}", ls=":", label=f"{method}, {many} steps")
    axes[0].set(yscale="log", ylabel="toy FVD (lower is better)")
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fvds = [r["fvd"]["mean"] for r in rows]
    axes[0].set_yticks([t for t in (50, 100, 200, 400, 800) if min(fvds) / 1.5 < t < 1.5 * max(fvds)])
    axes[1].set(ylabel="seen-prompt accuracy (chance 0.02)", ylim=(0, None))
    for ax in axes:
        ax.set(xscale="log", xlabel="sampling steps")
        steps = sorted({r["steps"] for r in rows if r["steps"] < many})
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"the toy models, seeds.json: mean ± std over {len(results['seeds'])} training seeds "
                 f"(teacher: over {results['eval_seeds']} sampling sets of {results['eval_count']} videos)",
                 fontsize=10)
    fig.tight_layout()
    ctx.save(fig, "toy_results")


FIGURES = {"schedule": fig_schedule, "forward_process": fig_forward_process, "boundary": fig_boundary,
           "solver_grid": fig_solver_grid, "teacher_step": fig_teacher_step, "loss_weighting": fig_loss_weighting,
           "sampler_steps": fig_sampler_steps, "videos": fig_videos, "ema_drift": fig_ema_drift,
           "init_target": fig_init_target, "teacher_free": fig_teacher_free, "toy_results": fig_toy_results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--weights", default=str(ROOT / "toy" / "weights"), help="a folder of shipped toy weights")
    p.add_argument("--quick", action="store_true", help="few samples and steps (a smoke test)")
    p.add_argument("--only", nargs="+", choices=list(FIGURES), default=list(FIGURES), metavar="NAME",
                   help=f"some figures: {', '.join(FIGURES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    ctx = Context(Path(args.weights), out, args.quick, args.seed)
    for name in args.only:
        FIGURES[name](ctx)
        print(f"{name}: done")
    print(f"figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
