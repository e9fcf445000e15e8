"""Where is a video's direction decided, and does the prompt take part? Real clips noised to t, denoised
by a video model once with their own caption and once with the opposite direction's caption.

    python -m toy.studies.decide --sd15 toy/weights/toy_sd15.safetensors --motion toy/weights/toy_teacher_motion.safetensors

For each t, over one clip of every other seen combination: how often the direction of motion of the
model's x0 prediction at t, and of a DDIM run from t to 0, is the clip's own. With the clip's caption
both should be 1.00 at every t. With the opposite caption, a model that follows prompts drops towards
0 where the clip's motion is still hidden in the noise; a model that ignores them keeps reading the
motion from x_t where it can (low t) and is at chance (0.25) where it cannot, whatever the caption.
"""
from __future__ import annotations

import argparse
import sys

import torch

from runtime import cli
from lcm.sampler import sample_ddim
from toy.constants import SCHEDULE
from toy.classifier import ATTRIBUTES
from toy.detect import detect
from toy.world import SEEN, caption, clip_from_seed, render

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def real_latents(model, combos, seed: int = 1000) -> torch.Tensor:
    """VAE latents [N, 4, F, h, w] (scaled) of one rendered clip per combination."""
    videos = []
    for i, combo in enumerate(combos):
        video, _ = render(clip_from_seed(seed + i, [combo], 8), 8, 32)
        videos.append(torch.from_numpy(video).float().div(127.5).sub(1).permute(0, 3, 1, 2))  # [F, 3, H, W]
    with torch.no_grad():
        latents = torch.stack([model.vae.encode(v).mean for v in videos])  # [N, F, 4, h, w]
    return latents.transpose(1, 2) * model.vae.cfg.scaling_factor


@torch.no_grad()
def follows_clip(model, latents: torch.Tensor, combos, t: int, opposite: bool, guidance: float = 4.5,
                 solver_stride: int = 40, seed: int = 0) -> tuple[float, float]:
    """(share of x0 predictions at t, share of DDIM runs from t) that move the way their clip does."""
    from pipeline import guided_model
    schedule = SCHEDULE
    clip_direction = torch.tensor([ATTRIBUTES["direction"].index(c[2]) for c in combos])
    captions = [caption(c[0], c[1], OPPOSITE[c[2]] if opposite else c[2]) for c in combos]
    denoiser = guided_model(model.unet, model.encode_prompts(captions), model.encode_prompts([""] * len(combos)),
                      guidance, None, 0.8, None, None)
    x = schedule.add_noise(latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)), t)
    x0 = schedule.x0_from_eps(x, denoiser(x, torch.tensor(t)), t)
    solved = sample_ddim(denoiser, x, schedule, list(range(t, 0, -solver_stride)), progress=False,
                         full_steps=schedule.steps // solver_stride)
    shares = []
    for z in (x0, solved):
        direction = detect(model.vae.decode_video(z).clamp(-1, 1))["direction"]
        shares.append(float((direction == clip_direction).float().mean()))
    return shares[0], shares[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sd15", required=True)
    p.add_argument("--motion", required=True, help="the video model's motion module")
    p.add_argument("--lora", help="a spatial LoRA, merged at scale 1")
    p.add_argument("--t", type=int, nargs="+", default=[300, 500, 650, 800, 900, 961])
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--every", type=int, default=2, help="one clip of every N-th seen combination")
    args = p.parse_args(argv)
    if any(not 0 < t < 1000 for t in args.t):
        raise cli.UserError(f"--t must lie in 1..999, not {args.t}")
    from sd15 import load_sd15
    model = load_sd15(args.sd15, args.motion, [(args.lora, 1.0)] if args.lora else [])
    model.unet.eval()
    combos = SEEN[::args.every]
    latents = real_latents(model, combos)
    print(f"{len(combos)} clips; share moving the way their clip does (chance 0.25)")
    for t in args.t:
        own = follows_clip(model, latents, combos, t, False, args.guidance)
        other = follows_clip(model, latents, combos, t, True, args.guidance)
        print(f"t={t:>3}  own caption: x0 {own[0]:.2f}, DDIM from t {own[1]:.2f}   "
              f"opposite caption: x0 {other[0]:.2f}, DDIM from t {other[1]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
