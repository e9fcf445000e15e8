"""Whole text-to-video pipeline: ours vs diffusers' AnimateDiffPipeline + LCMScheduler, same weights.

    python benchmarks/bench_pipeline.py                 # tiny random models, CPU
    python benchmarks/bench_pipeline.py --frames 16 --size 128 --steps 4 --guidance 1.5

Both pipelines are built from the same tiny files (tests/tiny.py), run in one process, alternating;
the script prints each one's median wall time (text encoding + sampling + decoding), the ratio
ours/diffusers (below 1 = ours faster) and each one's peak extra memory. Needs requirements-dev.txt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_unet import PeakMemory, timed  # noqa: E402
from pipeline import Request, generate  # noqa: E402
from sd15 import load_sd15  # noqa: E402
from test_unet import PerFrameGroupNorm  # noqa: E402
from tiny import hf_clip_tokenizer, original_motion_file_state, sd15_file_state, tiny_reference_parts  # noqa: E402
from weights import HINTS_KEY, save_safetensors  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="video height = width in pixels")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from diffusers import AnimateDiffPipeline, LCMScheduler

    folder = Path(tempfile.mkdtemp())
    unet2d, adapter, vae, text = tiny_reference_parts()
    hints = {"unet": {"attention_heads": 4, "motion_heads": 4, "norm_groups": 8}, "vae": {"norm_groups": 8},
             "text_encoder": {"heads": 4}}
    save_safetensors(sd15_file_state(unet2d, vae, text), folder / "sd15.safetensors", {HINTS_KEY: hints})
    save_safetensors(original_motion_file_state(adapter, None), folder / "motion.safetensors")
    ours = load_sd15(folder / "sd15.safetensors", folder / "motion.safetensors")
    theirs = AnimateDiffPipeline(vae=vae, text_encoder=text, tokenizer=hf_clip_tokenizer(folder), unet=unet2d,
                                 motion_adapter=adapter, scheduler=LCMScheduler(
                                     beta_schedule="linear", original_inference_steps=100))
    for m in theirs.unet.modules():
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
    theirs.set_progress_bar_config(disable=True)
    prompt = "a red circle moving left"
    request = Request(prompt=prompt, frames=args.frames, height=args.size, width=args.size, steps=args.steps,
                      guidance=args.guidance, progress=False)

    runs = {"ours": lambda: generate(ours, request),
            "diffusers": lambda: theirs(prompt=prompt, num_frames=args.frames, height=args.size, width=args.size,
                                        num_inference_steps=args.steps, guidance_scale=args.guidance,
                                        output_type="pt", generator=torch.Generator().manual_seed(0))}
    for run in runs.values():
        run()  # warm-up
    times, peaks = {k: [] for k in runs}, {k: 0 for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            with PeakMemory("cpu") as mem, torch.no_grad():
                times[name].append(timed(run, "cpu"))
            peaks[name] = max(peaks[name], mem.peak)
    o, t = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"tiny text-to-video, {args.frames} frames {args.size}x{args.size}, {args.steps} LCM steps, "
          f"guidance {args.guidance}, CPU {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"ours {o * 1e3:.1f} ms  diffusers {t * 1e3:.1f} ms  ratio {o / t:.3f}   peak extra memory "
          f"ours {peaks['ours'] / 2**20:.1f} MiB  diffusers {peaks['diffusers'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
