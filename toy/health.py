"""Is a toy model following its prompts? Per-attribute accuracy of a fixed batch of samples, by the
pixel detector (cheap, no learned weights), at a few and at many steps.

    python -m toy.health --sd15 runs/toy/teacher_image/model.safetensors                  # image teacher: stills
    python -m toy.health --sd15 ... --motion runs/toy/teacher_motion/motion_module.safetensors \
        --judge toy/weights/toy_classifier.safetensors      # and the judge's reading of the same videos
    python -m toy.health --sd15 ... --motion runs/toy/stage2/motion_module.safetensors \
        --lora runs/toy/stage1/lora.safetensors --sampler lcm --guidance 1

The toy pipeline (toy/stages.py) gives the training scripts `validation_score(...)` as their `score`:
its numbers go into log.jsonl at every validation, so a run that is not learning the prompt shows it
within minutes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lcm.schedule import NoiseSchedule
from runtime import cli
from toy.classifier import ATTRIBUTES
from toy.constants import FRAMES, ORIGINAL_STEPS, RESOLUTION, SCHEDULE, TEACHER_GUIDANCE
from toy.detect import STYLES, detect, detect_stills
from toy.world import HELD_OUT, SEEN, caption


def fixed_prompts(combos=SEEN, repeats: int = 1) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every combination `repeats` times, in a fixed order: (captions, labels)."""
    clips = [dict(zip(ATTRIBUTES, c)) for c in combos] * repeats
    target = {k: torch.tensor([ATTRIBUTES[k].index(c[k]) for c in clips]) for k in ATTRIBUTES}
    return [caption(*(c[k] for k in ATTRIBUTES)) for c in clips], target


def share(right: torch.Tensor) -> float:
    """The share of True in a boolean tensor, to three decimals."""
    return round(float(right.float().mean()), 3)


def scores(preds: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of samples right on each attribute, and on all three together."""
    right = {k: preds[k] == target[k] for k in ATTRIBUTES}
    return {**{k: share(v) for k, v in right.items()}, "all": share(torch.stack(list(right.values())).all(0))}


def shape_confusion(preds: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[list[int]]:
    """How the detector read each prompted shape: counts [prompted shape][read shape, or nothing last]."""
    shapes = len(ATTRIBUTES["shape"])
    read = torch.where(preds["shape"] < 0, shapes, preds["shape"])
    counts = torch.zeros(shapes, shapes + 1, dtype=torch.long).index_put_(
        (target["shape"], read), torch.ones_like(read), accumulate=True)
    return counts.tolist()


@torch.no_grad()
def prompt_following(model, steps: int, sampler: str, guidance: float, frames: int = FRAMES,
                     resolution: int = RESOLUTION, combos=SEEN, repeats: int = 1, seed: int = 0,
                     original_steps: int = ORIGINAL_STEPS, schedule: NoiseSchedule = SCHEDULE, judge=None,
                     confusion: bool = False) -> dict:
    """Per-attribute accuracy of samples of every combination (frames=1: stills of an image model,
    whose direction is read from the trail; otherwise videos, whose direction is their motion, with
    the trail's side and whether the motion agrees with it). With `judge` (a toy/classifier.py model),
    videos are also scored by it, under "judge": the second, independent reading. With `confusion`,
    also the detector's shape_confusion, under "shape_confusion"."""
    from toy.evaluate import toy_videos
    captions, target = fixed_prompts(combos, repeats)
    videos = toy_videos(model, captions, steps, sampler, guidance, seed, frames, resolution, original_steps, schedule)
    preds = detect_stills(videos[:, :, 0]) if frames == 1 else detect(videos)
    extra = {"outline": share(preds["style"] == STYLES.index("outline"))}  # the drawing style: toy/personalize.py
    if confusion:
        extra["shape_confusion"] = shape_confusion(preds, target)
    if frames == 1:
        return {**scores(preds, target), **extra}
    # the two halves of a video's direction: the image layers draw the trail on the prompted side in
    # each frame ("trail"), the text-blind motion modules move the shape away from it ("motion_follows_trail")
    record = {**scores(preds, target), "trail": share(preds["trail"] == target["direction"]),
              "motion_follows_trail": share(preds["direction"] == preds["trail"]), **extra}
    if judge is not None:
        from toy.classifier import judge as judge_videos
        record["judge"] = scores(judge_videos(judge, videos)[1], target)
    return record


def validation_score(objective: str, frames: int, original_steps: int = ORIGINAL_STEPS, combos=SEEN):
    """The `score` a training script calls at each validation, `score(model, schedule) -> dict`: seen-prompt
    accuracy at a few and at many steps, sampled with the schedule the run trains with (a consistency
    model: LCM at 1 and 4 steps, no guidance; a teacher: DDIM at 4 and 25 steps with the toy teacher's
    guidance), on each of `combos` once. `frames` 1: stills of an image model."""
    runs = (("lcm", 1, 1.0), ("lcm", 4, 1.0)) if objective == "consistency" else \
        (("ddim", 4, TEACHER_GUIDANCE), ("ddim", 25, TEACHER_GUIDANCE))

    def score(model, schedule: NoiseSchedule) -> dict:
        return {f"toy_{sampler}_{steps}": prompt_following(model, steps, sampler, guidance, frames, combos=combos,
                                                            original_steps=original_steps, schedule=schedule)
                for sampler, steps, guidance in runs}
    return score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sd15", required=True)
    p.add_argument("--motion", help="a motion module: measure videos (without: stills of the image model)")
    p.add_argument("--lora", help="a spatial LoRA, merged at scale 1")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpmpp_2m", "lcm"])
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 50])
    p.add_argument("--repeats", type=int, default=2, help="samples per combination")
    p.add_argument("--judge", help="also score videos with this toy judge (toy/weights/toy_classifier.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="the noise of the samples: other seeds, other sample sets")
    args = p.parse_args(argv)
    if args.judge and not Path(args.judge).exists():  # the models' paths are checked by their loaders
        raise cli.UserError(f"{args.judge}: no such file (--judge)")
    from sd15 import load_sd15
    model = load_sd15(args.sd15, args.motion, [(args.lora, 1.0)] if args.lora else [])
    frames = 8 if args.motion else 1
    judge = None
    if args.judge and frames > 1:
        from toy.classifier import load_classifier
        judge = load_classifier(Path(args.judge))
    for name, combos in (("seen", SEEN), ("held-out", HELD_OUT)):
        for steps in args.steps:
            r = prompt_following(model, steps, args.sampler, args.guidance, frames, combos=combos,
                                 repeats=args.repeats, seed=args.seed, judge=judge, confusion=True)
            by_judge, confusion = r.pop("judge", None), r.pop("shape_confusion")
            print(f"{name:>8} {steps:>2} {args.sampler} steps: " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
            if by_judge:
                print(f"{'':>8} {'':>2} judge:{'':>{len(args.sampler) + 1}} "
                      + "  ".join(f"{k} {v:.2f}" for k, v in by_judge.items()))
            shapes = ATTRIBUTES["shape"]
            print(f"{'':>11} the detector read " + "; ".join(
                f"{prompted}s as " + ", ".join(f"{read} {n}" for read, n in zip([*shapes, "nothing"], row) if n)
                for prompted, row in zip(shapes, confusion)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
