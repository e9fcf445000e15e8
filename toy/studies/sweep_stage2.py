"""Stage 2 alone, several ways, on the shipped teacher and stage-1 LoRA: what moves its 4-step result?

    python -m toy.studies.sweep_stage2 --device cuda                           # the default variants
    python -m toy.studies.sweep_stage2 --device cuda --variant "l2=--loss l2" --variant "lr 1e-4=--lr 1e-4"

    python -m toy.studies.sweep_stage2 --skip-baselines --steps 25 50 100 200 400  # one stage 2, measured as it trains

Each variant is one train_video.py run with toy/run.py's stage-2 flags (seed 0, fp32, its 20-step
warm-up; --steps, by default run.py's 25) plus its own flags, then toy/studies/compare.py's measurement at 1
and 4 steps (4 sets of 96 seen prompts, each set sampled as one batch). Several --steps values train
the variant on to each in turn and measure it there (the same run as one of the longest). The rows
before the variants are the shipped teacher's 4-step DDIM, the image-only LCM and the shipped
AnimateLCM on the same sets. On a CPU a training step takes about 1.1 s (400 steps: 7 minutes) and a
measured row about a minute. As in toy/run.py, a variant whose folder holds a checkpoint continues
from it (a finished one is only measured): delete the folder to retrain it.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from runtime import cli
from runtime.files import write_json
import train_video
from sd15 import load_sd15
from toy.studies.compare import add_sweep_arguments, measure, report, row_name, sweep_setup, sweep_train
from toy.constants import ORIGINAL_STEPS, TEACHER_GUIDANCE
from toy.stages import Budget, stage2_args
from runtime.folder import load_checkpoint

DEFAULT_VARIANTS = ["toy/run.py's stage 2=", "lr 1e-4=--lr 1e-4", "fixed w 3.5=--w-min 3.5 --w-max 3.5",
                    "lr 3e-5=--lr 3e-5", "seed 1=--seed 1", "L2 loss=--loss l2"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path("runs") / "sweep_stage2"), help="data/ and one folder per variant")
    p.add_argument("--variant", action="append", default=None, metavar="NAME=FLAGS",
                   help="a name and train_video.py flags added to stage 2's (repeatable)")
    p.add_argument("--steps", type=int, nargs="+", default=[Budget().stage2_steps],
                   help="stage-2 training steps (several: measure the same run at each)")
    add_sweep_arguments(p)
    args = p.parse_args(argv)
    weights, out, classifier, reference, prompt_sets = sweep_setup(args)
    sd, teacher_motion = weights / "toy_sd15.safetensors", weights / "toy_teacher_motion.safetensors"
    lora_file = weights / "toy_lcm_lora.safetensors"
    lora = [(lora_file, 1.0)]
    rows = {}

    def row(name, model, sampler, guidance, steps, original_steps=ORIGINAL_STEPS):
        rows[row_name(name, steps)] = measure(model, sampler, guidance, steps, prompt_sets, classifier, reference,
                                              args.count, original_steps)
        report(row_name(name, steps), rows[row_name(name, steps)])
        if args.json:
            write_json(args.json, rows)

    if not args.skip_baselines:
        row("teacher DDIM", load_sd15(sd, teacher_motion, device=args.device), "ddim", TEACHER_GUIDANCE, 4)
        image_lcm = load_sd15(sd, teacher_motion, lora, device=args.device)
        shipped = load_sd15(sd, weights / "toy_motion.safetensors", lora, device=args.device)
        for steps in (1, 4):
            row("image-only LCM", image_lcm, "lcm", 1.0, steps)
        for steps in (1, 4):
            row("AnimateLCM, shipped", shipped, "lcm", 1.0, steps)
    for variant in args.variant or DEFAULT_VARIANTS:
        name, _, flags = variant.partition("=")
        extra = shlex.split(flags)  # a variant's own solver grid is also its sampling grid
        original_steps = int(extra[extra.index("--original-steps") + 1]) if "--original-steps" in extra else \
            ORIGINAL_STEPS
        folder = "".join(c if c.isalnum() else "_" for c in name)
        checkpoint = out / folder / "checkpoint.pt"  # the counts are trained in order, so only the first can be passed
        trained = load_checkpoint(checkpoint)["step"] if checkpoint.exists() else 0
        if trained > min(args.steps):
            raise cli.UserError(f"{out / folder} has trained past {min(args.steps)} steps: delete it to measure "
                                "fewer steps")
        for train_steps in sorted(args.steps):
            start = time.perf_counter()
            sweep_train(train_video.main, [  # toy/run.py's stage 2, in fp32 on a GPU too, then the variant's flags
                *stage2_args(out, folder, sd, teacher_motion, lora_file, Budget(), train_steps, 0, args.device),
                "--precision", "fp32", *extra], name)
            print(f"{name}: trained to step {train_steps} in {time.perf_counter() - start:.0f} s", flush=True)
            model = load_sd15(sd, out / folder / "motion_module.safetensors", lora, device=args.device)
            label = name if len(args.steps) == 1 else f"{name} ({train_steps} training steps)"
            for steps in (1, 4):
                row(label, model, "lcm", 1.0, steps, original_steps)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
