"""What every figure script shares: the toy model's settings read from its weight files, the models
loaded on first use, and drawing helpers. Plots need matplotlib (requirements-dev.txt); nothing outside
docs/ imports it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from lcm.distill import apply_guidance, ddim_grid, ddim_solver_step  # noqa: E402
from lcm.schedule import NoiseSchedule  # noqa: E402
from runtime.files import write_output  # noqa: E402
from sd15 import load_sd15  # noqa: E402
from toy.classifier import to_model  # noqa: E402
from toy.world import sample_videos  # noqa: E402

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
        """out/NAME.png, whole or not at all (runtime/files.py)."""
        write_output(self.out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)


def pixels(model, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents [B, 4, F, h, w] or [B, 4, h, w] -> RGB in [0, 1], [B, (F,) H, W, 3]."""
    vae = model.vae
    if latents.dim() == 5:
        return (vae.decode_video(latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
    return (vae.decode(latents / vae.cfg.scaling_factor) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str] | None = None,
               title: str = "", cell: float = 1.15, vmax: float | None = None):
    """A figure of images, one list per row: RGB, or 2-D maps (grey around 0 if signed, else magma: on one
    scale 0..`vmax` for all of them, with a colour bar, when `vmax` is given)."""
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
            elif image.ndim == 2:  # a magnitude map: one scale for the whole figure (`vmax`), with a colour bar
                shown = ax.imshow(image, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
                if vmax is not None and i == n_rows - 1:
                    fig.colorbar(shown, ax=[axes[k][j] for k in range(n_rows)], fraction=0.05, pad=0.02)
            else:
                ax.imshow(image, interpolation="nearest")
            if col_labels and i == min(k for k, r in enumerate(rows) if j < len(r)):  # a column's top panel
                ax.set_title(col_labels[j], fontsize=8)
        axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if vmax is None:  # (a colour bar's axes do not take part in tight_layout)
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
    x0_g = apply_guidance(x0_c, x0_u, w)
    return x0_c, x0_u, x0_g, ddim_solver_step(s, x0_g, apply_guidance(eps_c, eps_u, w), torch.full((x.shape[0],), t_end))


