"""The toy world's results (docs/toy-world.md, the walkthrough's section 7, the README's GIF): plots of the
results files that the toy runs ship, and the GIF of the shipped models side by side."""
from __future__ import annotations

import json
import math

import matplotlib
import matplotlib.font_manager
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from docs.plotting import Context
from docs.tables import NAMES
from toy.evaluate import toy_videos

METRICS = {"fvd": "toy FVD (lower is better)", "seen_accuracy": "seen-prompt accuracy (chance 0.02)"}
MARKERS = "osv^DP*X"  # one per method, so that points drawn side by side stay apart


def same_videos(rows: list[dict], method: str, earlier: list[str], many: int) -> str:
    """' (= M at 1, 2 steps)' for the first earlier method M that scored exactly what `method` did (both metrics
    to 1e-4: the same videos, e.g. one step from pure noise is one step for DDIM and DPM-Solver++), else ''."""
    mine = {r["steps"]: r for r in rows if r["method"] == method and r["steps"] < many}
    for other in earlier:
        steps = [r["steps"] for r in rows if r["method"] == other and r["steps"] in mine
                 and all(math.isclose(r[m]["mean"], mine[r["steps"]][m]["mean"], rel_tol=1e-4) for m in METRICS)]
        if steps:
            counts = ", ".join(map(str, sorted(steps)))
            return f" (= {NAMES.get(other, other)} at {counts} step{'s' * (len(steps) > 1)})"
    return ""


def fig_toy_results(ctx: Context) -> None:
    """Toy FVD and seen-prompt accuracy against steps, from seeds.json (toy/seeds.py --ship): each distilled
    method's mean and std over its training seeds; the teacher is trained once, so its bars are the
    sampling spread. Top: every step count; bottom: 4 and 8 steps enlarged. The methods stand side by side
    at each step count (a small shift in x), each with its own marker."""
    results = json.loads((ctx.weights / "seeds.json").read_text())
    rows = results["table"]
    many = max(r["steps"] for r in rows)  # the teacher's many-step reference row
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["steps"] for r in rows if r["steps"] < many})
    zoomed = [n for n in steps if n >= 4]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.6), gridspec_kw={"height_ratios": [1, 0.85]})
    for i, method in enumerate(methods):
        few = sorted((r for r in rows if r["method"] == method and r["steps"] < many), key=lambda r: r["steps"])
        ref = [r for r in rows if r["method"] == method and r["steps"] == many]
        spread = "std" if few[0]["seeds"] > 1 else "sampling_std"
        shift = i - (len(methods) - 1) / 2
        style = {"fmt": MARKERS[i % len(MARKERS)] + "-", "ms": 4.5, "capsize": 2, "color": f"C{i}", "lw": 1.2}
        for column, metric in enumerate(METRICS):
            top, bottom = axes[0][column], axes[1][column]
            top.errorbar([r["steps"] * 2 ** (0.05 * shift) for r in few], [r[metric]["mean"] for r in few],
                         [r[metric][spread] for r in few], **style,
                         label=NAMES.get(method, method) + same_videos(rows, method, methods[:i], many))
            near = [r for r in few if r["steps"] in zoomed]  # at 4 steps and beyond, on a linear scale, no lines
            bottom.errorbar([zoomed.index(r["steps"]) + 0.07 * shift for r in near], [r[metric]["mean"] for r in near],
                            [r[metric][spread] for r in near], **{**style, "fmt": style["fmt"][0], "ms": 5.5})
            for r in ref:
                for ax in (top, bottom):
                    ax.axhline(r[metric]["mean"], color=f"C{i}", ls=":", lw=1,
                               label=f"{NAMES.get(method, method)}, {many} steps" if ax is top else None)
    axes[0][0].set(yscale="log")
    axes[0][0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0][0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fvds = [r["fvd"]["mean"] for r in rows]
    axes[0][0].set_yticks([t for t in (50, 100, 200, 400, 800) if min(fvds) / 1.5 < t < 1.5 * max(fvds)])
    axes[0][1].set(ylim=(0, 1.05))
    for column, label in enumerate(METRICS.values()):
        top, bottom = axes[0][column], axes[1][column]
        top.set(xscale="log", xlabel="sampling steps", ylabel=label)
        top.set_xticks(steps, [str(n) for n in steps])
        top.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        bottom.set(xlim=(-0.5, len(zoomed) - 0.5), xlabel="sampling steps (enlarged)", ylabel=label.split(" (")[0])
        bottom.set_xticks(range(len(zoomed)), [str(n) for n in zoomed])
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=7.5)
    fig.suptitle(f"the toy models, seeds.json: mean ± std over {len(results['seeds'])} training seeds "
                 f"(teacher: over {results['eval_seeds']} sampling sets of {results['eval_count']} videos); "
                 f"dotted: the teacher's {many} steps", fontsize=10)
    fig.tight_layout()
    ctx.save(fig, "toy_results")


def fig_personalization(ctx: Context) -> None:
    """From personalized.json (toy/personalize.py --ship): the style LoRA fused into the base at scale a,
    with AnimateLCM's LoRA and motion module, 4 steps: the share of videos drawn in the outline style and
    the prompt's attributes; beside them the personalized checkpoint's AnimateLCM and its teacher."""
    results = json.loads((ctx.weights / "personalized.json").read_text())
    rows = results["table"]
    sweep = sorted((r for r in rows if r["method"].startswith("AnimateLCM, style LoRA at")),
                   key=lambda r: float(r["method"].rsplit(" ", 1)[1]))
    scales = [float(r["method"].rsplit(" ", 1)[1]) for r in sweep]
    swept_seeds = sweep[0]["seeds"]  # the sweep runs on some personalization seeds only (seed 0)
    swept = f"{swept_seeds} personalization seed{'s' * (swept_seeds > 1)}"
    spread = "std" if swept_seeds > 1 else "sampling_std"  # one seed: the spread over its sampling sets
    bars = (f"std over {swept_seeds} seeds" if swept_seeds > 1 else
            f"std over {results['eval_seeds']} sampling sets of {results['eval_count']} videos")
    references = [("AnimateLCM on the personalized model", 4),
                  ("personalized teacher, DDIM", max(r["steps"] for r in rows))]

    def row(method, steps):
        return next(r for r in rows if r["method"] == method and r["steps"] == steps)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, title in ((axes[0], "outline", "share drawn in the outline style"),
                              (axes[1], "direction", "share moving as prompted (direction)")):
        ax.errorbar(scales, [r[metric]["mean"] for r in sweep], [r[metric][spread] for r in sweep], fmt="o-",
                    capsize=3, label=f"AnimateLCM, 4 steps: base + a × style LoRA ({swept})")
        for i, (method, steps) in enumerate(references):
            ref = row(method, steps)
            ax.axhline(ref[metric]["mean"], color=f"C{i + 1}", ls=":",
                       label=f"{method}, {steps} steps (mean of {ref['seeds']} seeds)")
        ax.set(xlabel="fusion weight a of the style LoRA", title=title, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, 0.87))  # below the dotted lines
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"on seen prompts (the captions never name the style)\nsolid: the style LoRA swept over a on "
                 f"{swept}, bars: {bars}; dotted: means over {len(results['seeds'])} "
                 f"personalization seeds", fontsize=10)
    fig.tight_layout()
    ctx.save(fig, "personalization")


STRIP_PROMPTS = ["a red circle moving left", "a blue square moving up", "a yellow triangle moving down",
                 "a green circle moving right"]


def labelled(frames: np.ndarray, columns: list[str], rows: list[str], header: int = 30) -> np.ndarray:
    """uint8 frames [F, H, W, 3] of a grid of equal cells -> [F, header + H, margin + W, 3]: a white header row
    naming the columns and a white margin naming the rows (as wide as the longest name), on every frame."""
    count, h, w, _ = frames.shape
    font = ImageFont.truetype(matplotlib.font_manager.findfont("DejaVu Sans"), 10)  # the plots' font
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 8 + max(measure.multiline_textbbox((0, 0), text, font)[2] for text in rows)
    canvas = Image.new("RGB", (margin + w, header + h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(columns):
        draw.multiline_text((margin + (j + 0.5) * w / len(columns), header / 2), text, "black", font, "mm",
                            spacing=1, align="center")
    for i, text in enumerate(rows):
        draw.multiline_text((margin - 4, header + (i + 0.5) * h / len(rows)), text, "black", font, "rm",
                            spacing=1, align="right")
    out = np.repeat(np.asarray(canvas)[None], count, 0)
    out[:, header:, margin:] = frames
    return out


@torch.no_grad()
def fig_strip(ctx: Context) -> None:
    """The README's GIF, one row per prompt: the teacher with DDIM at 50 steps (leading spacing, DDIM's default)
    and at 4 (trailing), AnimateLCM at 4 steps and at 1, the same noise in every column (3x enlarged), the
    columns and prompts named on it."""
    from media.video import write_video
    from toy.evaluate import strip
    toy, teacher, ours = ctx.toy, ctx.teacher, ctx.animatelcm
    many = 8 if ctx.quick else 50
    columns = [(f"teacher: DDIM\n{many}, leading", teacher, many, "ddim", toy.guidance, "leading"),
               ("teacher: DDIM\n4, trailing", teacher, 4, "ddim", toy.guidance, "trailing"),
               ("AnimateLCM\n4 steps", ours, 4, "lcm", 1.0, None), ("AnimateLCM\n1 step", ours, 1, "lcm", 1.0, None)]
    videos = [toy_videos(model, STRIP_PROMPTS, steps, sampler, g, seed=7, frames=toy.frames, resolution=toy.size,
                         original_steps=toy.original_steps, schedule=toy.schedule, spacing=spacing)
              for _, model, steps, sampler, g, spacing in columns]
    frames = np.concatenate([strip([v[i] for v in videos]) for i in range(len(STRIP_PROMPTS))], axis=1)
    names = [p.removeprefix("a ").replace(" moving", "\nmoving") for p in STRIP_PROMPTS]  # "red circle\nmoving left"
    write_video(labelled(frames, [c[0] for c in columns], names), ctx.out / "strip.gif", fps=6)


# ---- toy/weights/conditions.json (toy/conditions.py --ship): the design claims under both video conditions ----

def conditions_row(rows: list[dict], condition: str, method: str, steps: int) -> dict | None:
    return next((r for r in rows if r["condition"] == condition and r["method"] == method and r["steps"] == steps),
                None)


def fig_conditions_samples(ctx: Context) -> None:
    """Samples of each cell of the 2x2 and its references (conditions_samples.npz: training seed 0, the
    measurement's first prompts and noise, frames 0, 3 and 7 of each video; two videos a line), a column per
    condition, each named with its watermark share over the training seeds (conditions.json)."""
    from toy.conditions import SAMPLED
    results = json.loads((ctx.weights / "conditions.json").read_text())
    samples = np.load(ctx.weights / "conditions_samples.npz")

    def cell(videos: np.ndarray) -> np.ndarray:  # [N, 3, H, W, 3] -> two videos a line, a white gap between
        gap = np.full_like(videos[0][0][:, :3], 255)
        lines = [np.concatenate([np.concatenate([*videos[i], gap], axis=1) for i in (j, j + 1)], axis=1)
                 for j in range(0, len(videos), 2)]
        return np.concatenate([np.concatenate([line, np.full_like(line[:3], 255)]) for line in lines])
    conditions = results["conditions"]
    fig, axes = plt.subplots(len(SAMPLED), len(conditions), figsize=(5.2 * len(conditions), 1.55 * len(SAMPLED)),
                             squeeze=False)
    for j, condition in enumerate(conditions):
        for i, (method, steps) in enumerate(SAMPLED):
            ax = axes[i][j]
            ax.imshow(cell(samples[f"{condition}/{method}/{steps}"]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            row = conditions_row(results["table"], condition, method, steps)
            when = "" if method == "real clips" else f", {steps_word(steps)}"
            share = f": the mark in {row['watermark']['mean']:.2f} of the videos" if row else ""
            ax.set_title(f"{condition} clips, {method}{when}{share}", fontsize=8)
    fig.suptitle("four videos a panel, frames 0, 3 and 7 of each (training seed 0); the mark is the white box "
                 "mid-frame (toy/world.py:WEBVID)", fontsize=9)
    fig.tight_layout()
    ctx.save(fig, "conditions_samples")


def steps_word(n: int) -> str:
    return f"{n} step{'s' * (n > 1)}"


def fig_learning_curves(ctx: Context) -> None:
    """Stage 2's learning curves (conditions.json): the toy FVD of AnimateLCM at 1 and 4 sampling steps against
    the stage-2 step at which its motion module was kept, with AnimateLCM's target initialisation and with the
    plain one, mean ± std over training seeds; step 0 is the image-only LCM, where both start."""
    results = json.loads((ctx.weights / "conditions.json").read_text())
    rows, points = results["table"], results["curve_points"]
    fig, axes = plt.subplots(2, len(results["conditions"]), figsize=(5.2 * len(results["conditions"]), 6.4),
                             squeeze=False)
    for j, condition in enumerate(results["conditions"]):
        for i, steps in enumerate((1, 4)):
            ax = axes[i][j]
            start = conditions_row(rows, condition, "image-only LCM", steps)
            for k, init in enumerate(("AnimateLCM init", "plain init")):
                cells = [start] + [conditions_row(rows, condition, f"stage 2, {init}, at step {p}", steps)
                                   for p in points]
                xs = [0, *points]
                ax.errorbar([x + (k - 0.5) * 1.5 for x in xs], [c["fvd"]["mean"] for c in cells],
                            [c["fvd"]["std"] for c in cells], fmt="o-" if k == 0 else "s--", capsize=3, ms=4,
                            label=f"{init} ({cells[-1]['seeds']} training seeds)")
            ax.set(xlabel="stage-2 step (0: the image-only LCM)", ylabel="toy FVD against clean clips",
                   title=f"{condition} clips, AnimateLCM at {steps_word(steps)}")
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xticks([0, *points], [str(p) for p in (0, *points)])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("stage 2 with AnimateLCM's target initialisation (the target starts without the stage-1 LoRA) and "
                 "with the plain one (a copy of the online model); bars: std over training seeds", fontsize=9)
    fig.tight_layout()
    ctx.save(fig, "learning_curves")


# ---- toy/weights/drift.json (toy/drift.py --ship): style gained and motion kept against weight drift ----------

DRIFT_TICKS = (0.03, 0.05, 0.1, 0.2, 0.3)


def fig_drift(ctx: Context) -> None:
    """Each personalization of the sweep (drift.json; personalization seed 0, bars: std over its sampling sets) at
    its weight drift from the base: the share of videos drawn in the outline style (the style gained) and the
    share moving as prompted (the motion kept), for the personalized teacher (DDIM) and AnimateLCM on it (4
    steps); the shipped personalization is circled; dotted: the base model."""
    results = json.loads((ctx.weights / "drift.json").read_text())
    rows = results["rows"]
    base, sweep = rows[0], rows[1:]
    shipped = shipped_personalization(ctx)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), sharex=True)
    for j, (who, label) in enumerate((("teacher", f"the personalized teacher, DDIM {results['reference_steps']}"),
                                      ("animatelcm", "AnimateLCM on it, 4 steps"))):
        for i, (metric, title) in enumerate((("outline", "outline style: style gained"),
                                             ("direction", "moving as prompted: motion kept"))):
            ax = axes[i][j]
            for k, run in enumerate(dict.fromkeys(r["run"] for r in sweep)):
                points = [r for r in sweep if r["run"] == run]
                ax.errorbar([r["drift"]["total"] for r in points], [r[who][metric][0] for r in points],
                            [r[who][metric][1] for r in points], fmt=MARKERS[k] + ("-" if "fine" in run else "--"),
                            capsize=2, ms=5, label=f"{run} ({', '.join(str(r['steps']) for r in points)} steps)")
            ax.axhline(base[who][metric][0], color="grey", ls=":", label="the base model")
            mark = [r for r in sweep if (r["run"], r["steps"]) == shipped]
            if mark:
                ax.plot(mark[0]["drift"]["total"], mark[0][who][metric][0], "o", ms=14, mfc="none", mec="black",
                        label="shipped")
            ax.set(xscale="log", ylim=(-0.02, 1.02), title=label if i == 0 else None, ylabel=f"share {title}",
                   xlabel="weight drift ||W' - W|| / ||W|| of the UNet" if i else None)
            ax.set_xticks(DRIFT_TICKS, [f"{t:g}" for t in DRIFT_TICKS])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.grid(alpha=0.3)
    axes[1][0].legend(fontsize=6.5, loc="lower left")  # below the points: the lower half is empty there
    spread = (f"bars: std over {results['eval_seeds']} sampling sets of {results['eval_count']} videos"
              if results["eval_seeds"] > 1 else f"one sampling set of {results['eval_count']} videos a point")
    fig.suptitle("the personalization sweep on seen prompts (the captions never name the style), seed 0; "
                 f"{spread}; circled: the recipe shipped", fontsize=9)
    fig.tight_layout()
    ctx.save(fig, "drift")


def shipped_personalization(ctx: Context) -> tuple[str, int] | None:
    """(run, steps) of the sweep's point that toy/weights ships, from personalized.json's recipe, if it says."""
    shipped = json.loads((ctx.weights / "personalized.json").read_text()).get("recipe")
    return (shipped["run"], shipped["steps"]) if shipped else None
