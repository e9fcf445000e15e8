"""On a GPU: the real scripts at the settings of docs/gpu-budget.md's rows, their peak against the count.

    python -m benchmarks.budget_gpu                      # ROWS on the GPU (about 2 minutes a row on an H100)
    python -m benchmarks.budget_gpu --rows 2             # the first two
    python -m benchmarks.budget_gpu --size tiny --device cpu --rows 1 --frames 2 --resolution 64   # the plumbing

Each row runs benchmarks/bench_train.py (random SD1.5-sized weights in the real file formats, synthetic
clips, the training script for --steps steps) and prints torch.cuda.max_memory_allocated beside the
count of benchmarks/budget.json (the larger of the step's and the building's peak; at --size tiny:
counted here), and the step time.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks import bench_train, budget
from benchmarks.budget_table import RESULTS
from runtime import cli

ROWS = [  # (what, setting) of budget.json rows that bench_train runs (stages 1, 2 and 3's I2V), most telling first
    ("stage 2, 16 x 512²", "bf16 + checkpointing"),
    ("stage 3 (I2V encoder), 16 x 512²", "bf16 + checkpointing"),
    ("stage 1, 512², batch 4", "bf16 + checkpointing"),
    ("stage 2, 16 x 256²", "bf16"),
    ("stage 2, 16 x 256²", "fp32"),
    ("stage 2, 16 x 256²", "bf16 + checkpointing"),
]


def bench_args(flags: str, size: str, device: str, steps: int) -> tuple[list[str], object]:
    """bench_train's command line for a budget row's flags, and the row's settings."""
    stage, _, _, s = budget.parse(flags.split())
    frames = getattr(s, "frames", 1)  # stage 1: still images
    argv = ["--size", size, "--stages", stage, "--frames", str(frames), "--resolution", str(s.size),
            "--batch", str(s.batch), "--precision", s.precision, "--gradient-checkpointing",
            str(s.gradient_checkpointing).lower(), "--steps", str(steps), "--device", device]
    return argv, (stage, s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=len(ROWS), help="how many of ROWS, from the first")
    p.add_argument("--size", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--frames", type=int, default=0, help="in place of the rows' (0: theirs)")
    p.add_argument("--resolution", type=int, default=0, help="in place of the rows' (0: theirs)")
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    counted = {(r["what"], r["setting"]): r for r in json.loads(RESULTS.read_text())["rows"]}
    lines = []
    for what, setting in ROWS[:args.rows]:
        row = counted[(what, setting)]
        flags = row["flags"] + (f" --frames {args.frames}" if args.frames and "--frames" in row["flags"] else "") + \
            (f" --size {args.resolution}" if args.resolution else "")
        command, (stage, s) = bench_args(flags, args.size, args.device, args.steps)
        result = row if flags == row["flags"] and args.size == "sd15" else budget.count(stage, s, args.size)
        count = max(result["peak"], result["setup_peak"])  # the GPU's peak covers the building too
        (_, seconds, peak), = bench_train.main(command)
        measured = f"{peak:.2f} GiB, {peak * 2 ** 30 / count:.3f} of the count" if peak else "n/a on a CPU"
        lines.append(f"{what}, {setting}: counted {count / 2 ** 30:.2f} GiB, measured {measured}; {seconds:.2f} s/step")
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"\n{device}, {args.size} models, bench_train.py --steps {args.steps}:\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(cli.run(main))
