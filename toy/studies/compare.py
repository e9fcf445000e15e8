"""A closer look at one column of the results table: toy FVD at a few step counts, on larger samples.

    python -m toy.studies.compare                      # the shipped toy model, 4 steps, 4 sets of 96 seen prompts
    python -m toy.studies.compare --run runs/toy --steps 4 8
    python -m toy.studies.compare --teacher-steps 12         # also the teacher's DDIM at 12 steps: what distillation aims at

The evaluation in toy/run.py uses 3 sets of 24 videos per cell, where a Frechet distance is both noisy
and biased upwards by the small sample. This draws larger sets, samples every model on the same
prompts and noise, and also measures fresh real clips against the same reference: the floor that a
perfect generator would reach at this sample size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import cli
from runtime.files import write_json
from sd15 import load_sd15
from toy.classifier import frechet_distance, judge, load_classifier, real_reference, to_model
from toy.constants import FRAMES, RESOLUTION, SHIPPED, TEACHER_GUIDANCE, WEIGHTS
from toy.evaluate import mean_std, prompts, toy_videos
from toy.world import SEEN, sample_videos, write_dataset


def seen_prompt_sets(count: int, sets: int) -> list[list[str]]:
    """The seen-prompt sets every row is measured on (set s drawn with seed 80000 + s)."""
    return [prompts(count, 80_000 + s, SEEN)[0] for s in range(sets)]


def models(run: Path | None, weights: Path, guidance: float = TEACHER_GUIDANCE) -> tuple[dict, Path]:
    """Teacher (sampled with classifier-free `guidance`), image-only LCM and AnimateLCM, and the judge's
    file: from a toy/run.py folder, or (run=None) from shipped weights. A run folder whose one-stage
    baseline (direct/: its spatial LoRA trains with its motion module) or the stage-2 initialisation
    ablation (stage2_plain_init/) have finished adds their rows too."""
    def path(shipped_name: str) -> Path:
        return run / SHIPPED[shipped_name] if run is not None else weights / shipped_name
    sd, teacher_motion = path("toy_sd15.safetensors"), path("toy_teacher_motion.safetensors")
    lora = [(path("toy_lcm_lora.safetensors"), 1.0)]
    found = {"teacher DDIM": (load_sd15(sd, teacher_motion), "ddim", guidance),
             "image-only LCM": (load_sd15(sd, teacher_motion, lora), "lcm", 1.0),
             "AnimateLCM (decoupled)": (load_sd15(sd, path("toy_motion.safetensors"), lora), "lcm", 1.0)}
    if run is not None:  # row name, run folder, the spatial LoRA its motion module goes with
        for name, folder, loras in (("AnimateLCM, plain init", "stage2_plain_init", lora),
                                    ("direct (VideoLCM-style)", "direct", [(run / "direct" / "lora.safetensors", 1.0)])):
            if (run / folder / "DONE").exists():
                found[name] = (load_sd15(sd, run / folder / "motion_module.safetensors", loras), "lcm", 1.0)
    return found, path("toy_classifier.safetensors")


def measure(model, sampler: str, guidance: float, steps: int, prompt_sets: list[list[str]], classifier,
            reference, batch: int = 32, original_steps: int = 50) -> list[float]:
    """Toy FVD of one model on each prompt set (set s sampled with seed 500 + s; each video has its own noise)."""
    values = []
    for s, caps in enumerate(prompt_sets):
        videos = toy_videos(model, caps, steps, sampler, guidance, seed=500 + s, batch=batch,
                            original_steps=original_steps)
        values.append(frechet_distance(judge(classifier, videos)[0], reference))
    return values


def row_name(name: str, steps: int) -> str:
    return f"{name}, {steps} step{'s' * (steps > 1)}"


def report(name: str, values: list[float]) -> None:
    mean, std = mean_std(values)
    print(f"{name:<34} toy FVD {mean:6.1f} ± {std:4.1f}  per set {[round(v, 1) for v in values]}", flush=True)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The flags toy/studies/sweep_stage1.py and toy/studies/sweep_stage2.py share (besides --out and --variant)."""
    p.add_argument("--weights", default=str(WEIGHTS), help="shipped toy weights (teacher, judge, ...)")
    p.add_argument("--clips", type=int, default=2000, help="the training data: toy/run.py's, with seed 0")
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--count", type=int, default=96)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-baselines", action="store_true", help="only the variants' rows")
    p.add_argument("--json", default=None, help="also write the numbers here (after every row)")


SWEEP_WEIGHTS = ("toy_sd15.safetensors", "toy_teacher_motion.safetensors", "toy_lcm_lora.safetensors",
                 "toy_motion.safetensors", "toy_classifier.safetensors")  # what both sweeps read from --weights


def sweep_setup(args) -> tuple:
    """A sweep's data folder (written once, as toy/run.py writes it), judge, reference and prompt sets;
    --device and --weights are checked first, before minutes of data writing."""
    weights, out = Path(args.weights), Path(args.out)
    problems = [p for p in [cli.device_problem(args.device)] if p]
    missing = [name for name in SWEEP_WEIGHTS if not (weights / name).exists()]
    if missing:
        problems.append(f"--weights {weights} lacks {', '.join(missing)}: pass the folder of the shipped toy "
                        "weights (toy/weights, or toy/run.py --ship-to's)")
    if problems:
        raise cli.UserError("; ".join(problems))
    if not (out / "data" / "clips" / f"{args.clips - 1:05d}.gif").exists():
        write_dataset(out / "data", args.clips, FRAMES, RESOLUTION, 0)
    classifier = load_classifier(weights / "toy_classifier.safetensors")
    reference = real_reference(classifier, 512, seed=321)
    return weights, out, classifier, reference, seen_prompt_sets(args.count, args.sets)


def sweep_train(main, argv: list[str], name: str) -> None:
    """A training script's main as a sweep runs it: stopped by a signal (its checkpoint saved), the sweep
    stops too, with the signal's exit code; the same sweep command continues it (its flags resume)."""
    try:
        main(argv)
    except cli.Interrupted as e:
        raise cli.Interrupted(f"{name} was stopped with its checkpoint saved: run this command again to continue it",
                              e.code) from e


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a toy/run.py output folder (default: the shipped weights)")
    p.add_argument("--weights", default=str(WEIGHTS), help="a folder of shipped toy weights")
    p.add_argument("--steps", type=int, nargs="+", default=[4])
    p.add_argument("--teacher-steps", type=int, nargs="*", default=[],
                   help="extra rows: the teacher's DDIM alone at these step counts")
    p.add_argument("--guidance", type=float, default=TEACHER_GUIDANCE, help="the teacher's classifier-free guidance")
    p.add_argument("--sets", type=int, default=4, help="independent sets of prompts and noise")
    p.add_argument("--count", type=int, default=96, help="videos per set")
    p.add_argument("--reference", type=int, default=512, help="real clips behind the FVD")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    found, classifier_path = models(Path(args.run) if args.run else None, Path(args.weights), args.guidance)
    classifier = load_classifier(classifier_path)
    reference = real_reference(classifier, args.reference, seed=321)
    real = []
    for s in range(args.sets):  # the floor: fresh real clips of the same prompts' distribution
        videos, _, _ = sample_videos(args.count, 90_000 + s, SEEN)
        real.append(frechet_distance(judge(classifier, to_model(videos))[0], reference))
    rows = {"real clips (floor)": real}
    prompt_sets = seen_prompt_sets(args.count, args.sets)  # shared by every row
    runs = [(name, steps) for steps in args.steps for name in found] + \
        [("teacher DDIM", steps) for steps in args.teacher_steps if steps not in args.steps]
    for name, steps in runs:
        row = row_name(name, steps)
        rows[row] = measure(*found[name], steps, prompt_sets, classifier, reference)
        report(row, rows[row])
    report("real clips (floor)", real)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
