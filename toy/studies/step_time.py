"""What a toy training step costs against its batch size: does a bigger batch buy speed on a CPU?

    python -m toy.studies.step_time --run runs/toy                       # stages 1, 2 and direct, batches 4-32
    python -m toy.studies.step_time --run runs/toy --stages video --batches 8 16 --steps 6
    python -m toy.studies.step_time --run runs/toy --ship              # also toy/weights/step_time.json (the docs' table)

Each stage runs its script (toy/stages.py's flags, one thread, no validation) for --steps steps at each batch
size into a temporary folder; its log.jsonl has a record a step, and the time per step is the mean over the
steps after the first two (which load the models). Printed: seconds a step and milliseconds a sample. The
studies of docs/toy-world.md section 4.4 took their budget from this.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import train_image
import train_video
from runtime import cli
from runtime.files import write_json
from toy.constants import WEIGHTS
from toy.stages import Budget, stage1_args, stage2_args


def seconds_a_step(log: Path) -> float:
    """The mean time between log records after the first two (one record a step)."""
    times = [json.loads(line)["time"] for line in log.read_text().splitlines() if '"loss"' in line]
    return (times[-1] - times[1]) / (len(times) - 2)


def timed(stage: str, run: Path, batch: int, steps: int, folder: Path) -> float:
    b = Budget(image_batch=batch, video_batch=batch)
    teacher = run / "teacher_image" / "model.safetensors"
    motion = run / "teacher_motion" / "motion_module.safetensors"
    quiet = ["--steps", str(steps), "--log-every", "1", "--val-every", "0", "--save-every", "1000",
             "--overwrite", "true", "--resume", "false"]
    if stage == "image":
        train_image.main([*stage1_args(folder, stage, teacher, b, 0, "cpu", images=run / "data" / "images"), *quiet])
    else:
        args = stage2_args(folder, stage, teacher, motion, run / "stage1" / "lora.safetensors", b, steps, 0, "cpu")
        args[args.index("--data") + 1] = str(run / "data" / "clips")
        if stage == "direct":
            args = [a for a in args if a not in ("--lora", str(run / "stage1" / "lora.safetensors"))]
            args += ["--direct", "true", "--lora-rank", "16"]
        train_video.main([*args, *quiet])
    return seconds_a_step(folder / stage / "log.jsonl")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a toy/run.py folder (its data, teacher and stage 1)")
    p.add_argument("--stages", nargs="+", default=["image", "video", "direct"], choices=["image", "video", "direct"])
    p.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="3 steps (the slow tests)")
    p.add_argument("--ship", action="store_true", help="write the times to --ship-to")
    p.add_argument("--ship-to", default=str(WEIGHTS / "step_time.json"))
    args = p.parse_args(argv)
    run = Path(args.run)
    for name in ("data", "teacher_image", "teacher_motion", "stage1"):
        if not (run / name / "DONE").exists():
            raise cli.UserError(f"{run / name} has not finished: run python -m toy.run --out {run} first")
    steps = 3 if args.quick else max(3, args.steps)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            for batch in args.batches:
                seconds = timed(stage, run, batch, steps, Path(tmp))
                rows.append({"stage": stage, "batch": batch, "seconds": round(seconds, 4)})
                print(f"{stage:>6}  batch {batch:>3}: {seconds:6.2f} s a step, {1000 * seconds / batch:6.1f} ms a sample",
                      flush=True)
    if args.ship:
        write_json(Path(args.ship_to), {"threads": 1, "steps": steps, "rows": rows})
        print(f"shipped: {args.ship_to}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
