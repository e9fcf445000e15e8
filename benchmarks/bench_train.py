"""Training-step time and peak memory of each stage, measured by running the real scripts.

    python -m benchmarks.bench_train                                   # tiny models, CPU, all stages
    python -m benchmarks.bench_train --size sd15 --stages video --frames 16 --resolution 256 \
        --device cuda --precision bf16                                 # stage 2 at full SD1.5 size

Random weights of the chosen size are written in the real file formats (SD1.5 single file, AnimateDiff
motion module, kohya LoRA) next to a folder of synthetic captioned clips; then train_image.py,
train_video.py and train_adapter.py run for `--steps` steps each with a log record per step. The
median step time (over the steps after the first two, which include start-up) and the peak GPU
memory (the CUDA allocator's peak of each stage's run; not measured on CPU) are read back from the
scripts' own log.jsonl. benchmarks/budget_gpu.py runs it at the settings of docs/gpu-budget.md's rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from runtime import cli
from tests.tiny import write_clips, write_training_files


def step_times(log: Path) -> tuple[float, float | None]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    times = np.diff([r["time"] for r in records])[2:]
    peak = max((r.get("peak_memory_gb", 0) for r in records), default=None)
    return statistics.median(times.tolist()), peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--stages", default="image,video,adapter")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--gradient-checkpointing", default="true")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp())
    write_training_files(folder, args.size)
    write_clips(folder, 4, args.frames, args.resolution)
    common = ["--steps", str(args.steps), "--log-every", "1", "--save-every", "100000", "--val-every", "0",
              "--batch", str(args.batch), "--size", str(args.resolution), "--device", args.device,
              "--precision", args.precision, "--workers", "0", "--warmup-steps", "1",
              "--gradient-checkpointing", args.gradient_checkpointing]
    video = ["--frames", str(args.frames), "--stride", "1"]
    runs = {
        "image": ("train_image", ["--sd15", str(folder / "sd15.safetensors"), "--data", str(folder / "images")]),
        "video": ("train_video", ["--sd15", str(folder / "sd15.safetensors"), "--teacher-motion",
                                  str(folder / "motion.safetensors"), "--lora", str(folder / "lora.safetensors"),
                                  "--data", str(folder / "clips"), *video]),
        "adapter": ("train_adapter", ["--sd15", str(folder / "sd15.safetensors"), "--motion",
                                      str(folder / "motion.safetensors"), "--data", str(folder / "clips"), *video]),
    }
    results = []
    for stage in args.stages.split(","):
        module, argv = runs[stage]
        out = folder / f"run_{stage}"
        if torch.device(args.device).type == "cuda":  # each stage's own peak, not the largest so far
            torch.cuda.reset_peak_memory_stats(args.device)
        __import__(module).main([*argv, *common, "--out", str(out)])
        step, peak = step_times(out / "log.jsonl")
        results.append((stage, step, peak))
    print(f"\n{args.size} models, batch {args.batch}, {args.resolution}x{args.resolution}"
          f"{'' if args.stages == 'image' else f', {args.frames} frames'}, {args.precision} on {args.device}, "
          f"gradient checkpointing {args.gradient_checkpointing}, median of steps 3..{args.steps}")
    for stage, step, peak in results:
        memory = f"peak memory {peak:.2f} GiB" if peak else "peak memory n/a on CPU"
        print(f"  stage {stage:>7}: {step * 1e3:9.1f} ms/step   {memory}")
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main))
