"""Stage 1 alone, several ways, on the shipped teacher: how much do its LoRA, and the stage 2 on it, move?

    python -m toy.studies.sweep_stage1 --variant "uniform=--loss-weight uniform" --variant "sqrt_snr="
    python -m toy.studies.sweep_stage1 --variant "seed 1=--seed 1" --variant "1800 steps=--steps 1800" --device cuda

Each variant is one train_image.py run with toy/run.py's stage-1 flags (seed 0, fp32 also on a GPU) plus
its own flags, measured as the image-only LCM (its LoRA + the teacher's motion module), then one stage 2
on that LoRA (toy/run.py's, --stage2-steps steps) measured as AnimateLCM; each at 1 and 4 steps on
toy/studies/compare.py's 4 sets of 96 seen prompts, so the rows read beside compare's. Before the variants: the
teacher's DDIM at 4, 8 and 12 steps and the shipped image-only LCM and AnimateLCM on the same sets.
On the 2-core CPU a variant takes about 16 minutes (stage 1 ten, stage 2 one, four rows a minute each).
A variant whose folder holds a finished LoRA is only measured: delete the folder to retrain it.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from runtime import cli
from runtime.files import write_json
import train_image
import train_video
from sd15 import load_sd15
from toy.studies.compare import add_sweep_arguments, measure, report, row_name, sweep_setup, sweep_train
from toy.constants import TEACHER_GUIDANCE
from toy.stages import Budget, stage1_args, stage2_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path("runs") / "sweep_stage1"), help="data/ and two folders per variant")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS",
                   help="a name and train_image.py flags added to stage 1's (repeatable; empty: run.py's stage 1)")
    p.add_argument("--stage2-steps", type=int, default=Budget().stage2_steps)
    add_sweep_arguments(p)
    args = p.parse_args(argv)
    weights, out, classifier, reference, prompt_sets = sweep_setup(args)  # compare's prompt sets
    sd, teacher_motion = weights / "toy_sd15.safetensors", weights / "toy_teacher_motion.safetensors"
    rows = {}

    def row(name, model, sampler, guidance, steps):
        rows[row_name(name, steps)] = measure(model, sampler, guidance, steps, prompt_sets, classifier, reference)
        report(row_name(name, steps), rows[row_name(name, steps)])
        if args.json:
            write_json(args.json, rows)

    if not args.skip_baselines:
        teacher = load_sd15(sd, teacher_motion, device=args.device)
        for steps in (4, 8, 12):
            row("teacher DDIM", teacher, "ddim", TEACHER_GUIDANCE, steps)
        shipped_lora = [(weights / "toy_lcm_lora.safetensors", 1.0)]
        for name, motion in (("image-only LCM, shipped", teacher_motion),
                             ("AnimateLCM, shipped", weights / "toy_motion.safetensors")):
            model = load_sd15(sd, motion, shipped_lora, device=args.device)
            for steps in (1, 4):
                row(name, model, "lcm", 1.0, steps)
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        folder = "".join(c if c.isalnum() else "_" for c in name)
        start = time.perf_counter()
        sweep_train(train_image.main, [*stage1_args(out, folder, sd, Budget(), 0, args.device), "--precision", "fp32",
                                       *shlex.split(flags)], f"{name}'s stage 1")
        print(f"{name}: stage 1 in {time.perf_counter() - start:.0f} s", flush=True)
        lora = out / folder / "lora.safetensors"
        model = load_sd15(sd, teacher_motion, [(lora, 1.0)], device=args.device)
        for steps in (1, 4):
            row(f"{name}: image-only LCM", model, "lcm", 1.0, steps)
        sweep_train(train_video.main, [*stage2_args(out, f"{folder}_stage2", sd, teacher_motion, lora, Budget(),
                                                    args.stage2_steps, 0, args.device), "--precision", "fp32"],
                    f"{name}'s stage 2")
        model = load_sd15(sd, out / f"{folder}_stage2" / "motion_module.safetensors", [(lora, 1.0)], device=args.device)
        for steps in (1, 4):
            row(f"{name}: AnimateLCM", model, "lcm", 1.0, steps)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
