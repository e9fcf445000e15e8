"""The paper's title claim in miniature: a personalized image model animated in a few steps, without any
video of its style and without distilling it again.

    python -m toy.personalize --run runs/toy              # seeds 1 and 2 beside the run's 0, then the table
    python -m toy.personalize --run runs/toy --ship       # also the personalized model, its style LoRA and
                                                          # personalized.json into toy/weights/
    python -m toy.personalize --from-weights toy/weights --run runs/personalize --seeds   # no run folder yet:
                                  # the shipped teacher, AnimateLCM and judge; seed 0 only

The run (toy/run.py) has the teacher, AnimateLCM's stage-1 LoRA and stage-2 motion module, all trained on
the filled world, and its personalization stages (toy/stages.py): the image teacher fine-tuned on stills
in the outline style (a personalized model, at the recipe toy/drift.py's sweep chose: Budget.personalize_lr
and personalize_steps), the same as a style LoRA, and the upper bound, stage 1 distilled on the
personalized model itself (both on seed 0 only). Each extra seed retrains the fine-tune with that seed
(the same stills), into <run>/personalize/<seed>/. Every seed is then measured on seen prompts (the captions
never mention the style), against real outline clips: the share of videos drawn in the outline style,
colour, shape and direction (the pixel detector, which reads outlines: tests/test_toy_detect.py), and
the toy FVD, for
  - the personalized teacher (the personalized image model + the teacher's motion module, DDIM 50):
    AnimateDiff's claim, the motion module transfers;
  - AnimateLCM on the personalized model (+ the stage-1 LoRA and the AnimateLCM motion module): the
    paper's claim; and DDIM (leading and trailing) at 4 steps on the personalized teacher;
  - the upper bound (the personalized model's own stage 1; seed 0);
  - AnimateLCM on the base model, for reference;
  - the style LoRA fused into the base at scales `--scales` with AnimateLCM's LoRA and motion module, and
    its teacher (seed 0: a figure, not a target).
Outputs: <run>/personalize/results.json and results.txt. A finished stage or measurement is kept.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from runtime import cli
from runtime.files import write_json, write_text
from sd15 import load_sd15
from toy.classifier import ATTRIBUTES, frechet_distance, judge, labels, load_classifier, real_reference
from toy.constants import TEACHER_GUIDANCE, WEIGHTS
from toy.detect import STYLES, detect
from toy.evaluate import mean_std, prompts, toy_videos
from toy.run import measured, read_times, recast_file, run_stages, start_from_weights
from toy.stages import QUICK, Budget, stages
from toy.world import SEEN

STAGES = ("personalize",)  # per seed; seed 0 (the run) also the stills, the VAE, the style LoRA, the upper bound
TRAINED = (*STAGES, "style_lora", "stage1_outline")  # the personalization's training stages: their times are shipped
SEED0_STAGES = ("outline_images", "style_vae", *TRAINED)
SHARED = ("data", "teacher_image", "teacher_motion", "stage1", "stage2", "classifier")
OUTLINE = STYLES.index("outline")
FROM_WEIGHTS = ("vae", "teacher_image", "teacher_motion", "stage1", "stage2", "classifier")  # --from-weights
ROOT = Path(__file__).resolve().parents[1]


def seed_folder(run: Path, seed: int) -> Path:
    return run if seed == 0 else run / "personalize" / str(seed)


def train_seed(run: Path, seed: int, budget: Budget, device: str) -> dict:
    """The personalization stages with `seed`, on the run's teacher and stills; returns their times (s)."""
    out = seed_folder(run, seed)
    for name in SHARED:
        if not (run / name / "DONE").exists():
            raise cli.UserError(f"{run / name} has not finished: run python -m toy.run --out {run} first")
    out.mkdir(parents=True, exist_ok=True)
    for name in (*SHARED, "outline_images", "style_vae") if seed else ():  # the run's teacher, stills, AnimateLCM
        if not (out / name).exists():
            (out / name).symlink_to((run / name).resolve(), target_is_directory=True)
    torch.manual_seed(seed)
    names = STAGES if seed else SEED0_STAGES  # others: seed 0's stills and VAE
    todo = {name: made for name, made in stages(out, budget, seed, device).items() if name in names}
    return run_stages(out, todo)


def models(folder: Path, scales: list[float], device: str, reference_steps: int = 50,
           upper_bound: bool = False) -> dict[str, tuple]:
    """name -> (model, sampler, guidance, step counts) of one seed's folder; the teachers' many-step
    reference at `reference_steps`; the style LoRA's teacher and fusion sweep only where `scales` is not empty,
    the upper bound only with `upper_bound` (seed 0, which trains it)."""
    teacher, personalized = folder / "teacher_image" / "model.safetensors", folder / "personalize" / "model.safetensors"
    base = folder / "style_vae" / "model.safetensors"  # the teacher with a VAE that can draw outlines
    teacher_motion, motion = (folder / "teacher_motion" / "motion_module.safetensors",
                              folder / "stage2" / "motion_module.safetensors")
    lcm, style = (folder / "stage1" / "lora.safetensors", 1.0), folder / "style_lora" / "lora.safetensors"
    personalized_teacher = load_sd15(personalized, teacher_motion, device=device)
    found = {
        "personalized teacher, DDIM": (personalized_teacher, "ddim", TEACHER_GUIDANCE, (4, reference_steps)),
        "personalized teacher, DDIM trailing": (personalized_teacher, "ddim trailing", TEACHER_GUIDANCE, (4,)),
        "AnimateLCM on the personalized model": (load_sd15(personalized, motion, [lcm], device=device), "lcm", 1.0,
                                                 (1, 2, 4)),
        "AnimateLCM on the base model": (load_sd15(teacher, motion, [lcm], device=device), "lcm", 1.0, (1, 2, 4)),
    }
    if upper_bound:
        found["upper bound: its own stage 1"] = (load_sd15(personalized, motion, [(folder / "stage1_outline" /
                                                                                 "lora.safetensors", 1.0)],
                                                           device=device), "lcm", 1.0, (1, 2, 4))
    if scales:  # the fusion-weight sweep (a figure, not a target): seed 0 only
        found["style LoRA teacher, DDIM"] = (load_sd15(base, teacher_motion, [(style, 1.0)], device=device), "ddim",
                                             TEACHER_GUIDANCE, (reference_steps,))
    for a in scales:
        found[f"AnimateLCM, style LoRA at {a:g}"] = (load_sd15(base, motion, [(style, a), lcm], device=device),
                                                     "lcm", 1.0, (4,))
    for model, *_ in found.values():
        model.unet.eval()
    return found


def measure(model, sampler: str, guidance: float, steps: int, classifier, reference, count: int, sets: int) -> dict:
    """One cell: on `sets` sampling sets of `count` seen prompts (main evaluation's prompts and noise), the
    outline share, each attribute and all three by the pixel detector, and the toy FVD against real
    outline clips; each (mean, std) over the sets."""
    spacing = "trailing" if sampler.endswith("trailing") else None
    values = {k: [] for k in ("outline", *ATTRIBUTES, "all", "fvd")}
    for s in range(sets):
        caps, clips = prompts(count, 60_000 + s, SEEN)
        videos = toy_videos(model, caps, steps, sampler.split()[0], guidance, seed=s, spacing=spacing)
        preds, truth = detect(videos), labels(clips)
        right = {k: preds[k] == truth[k] for k in ATTRIBUTES}
        values["outline"].append(float((preds["style"] == OUTLINE).float().mean()))
        for k in ATTRIBUTES:
            values[k].append(float(right[k].float().mean()))
        values["all"].append(float(torch.stack(list(right.values())).all(0).float().mean()))
        values["fvd"].append(frechet_distance(judge(classifier, videos)[0], reference))
    return {k: mean_std(v) for k, v in values.items()}


def evaluate_seed(folder: Path, classifier, reference, budget: Budget, scales: list[float], device: str,
                  upper_bound: bool = False) -> list[dict]:
    rows = []
    for name, (model, sampler, guidance, steps_list) in models(folder, scales, device, budget.reference_steps,
                                                               upper_bound).items():
        for steps in steps_list:
            cell = measure(model, sampler, guidance, steps, classifier, reference, budget.eval_count,
                           budget.eval_seeds)
            rows.append({"method": name, "sampler": sampler, "steps": steps, **cell})
            print(f"  {name:<38} {steps:>2} steps  outline {cell['outline'][0]:.2f}  direction "
                  f"{cell['direction'][0]:.2f}  all three {cell['all'][0]:.2f}  toy FVD {cell['fvd'][0]:6.1f}",
                  flush=True)
    return rows


def claims(rows: list[dict], reference_steps: int = 50) -> dict[str, bool]:
    """The issue's targets, each true or false for one personalization seed."""
    cell = {(r["method"], r["steps"]): r for r in rows}
    teacher, ours, base = (cell[("personalized teacher, DDIM", reference_steps)],
                           cell.get(("AnimateLCM on the personalized model", 4)),
                           cell.get(("AnimateLCM on the base model", 4)))
    held = {"personalized teacher: outline style >= 0.9": teacher["outline"][0] >= 0.9,
            "personalized teacher: direction >= 0.9": teacher["direction"][0] >= 0.9}
    if ours and base:
        held["AnimateLCM 4 steps: outline style within 0.05 of the personalized teacher"] = \
            ours["outline"][0] >= teacher["outline"][0] - 0.05
        held["AnimateLCM 4 steps: every attribute within 0.05 of AnimateLCM on the base model"] = all(
            ours[k][0] >= base[k][0] - 0.05 for k in ATTRIBUTES)
        held["AnimateLCM 4 steps: toy FVD within 1.2x the personalized teacher's"] = \
            ours["fvd"][0] <= 1.2 * teacher["fvd"][0]
    return held


def across_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per (method, steps), in the order first measured: each metric's mean and std over the seeds that
    measured it (the sweep and the upper bound: seed 0 only) of the seeds' means, and the mean sampling spread."""
    cells = {}
    for rows in per_seed.values():
        for row in rows:
            cells.setdefault((row["method"], row["steps"]), []).append(row)
    table = []
    for (method, steps), seed_rows in cells.items():
        metrics = {k: [c[k] for c in seed_rows] for k in ("outline", *ATTRIBUTES, "all", "fvd")}
        table.append({"method": method, "sampler": seed_rows[0]["sampler"], "steps": steps, "seeds": len(seed_rows),
                      **{k: {**dict(zip(("mean", "std"), mean_std([v[0] for v in values]))),
                             "sampling_std": statistics.mean(v[1] for v in values)} for k, values in metrics.items()}})
    return table


def markdown(table: list[dict], held: dict[str, list[bool]], seeds: list[int], times: dict) -> str:
    def cell(r, k, digits=2):
        return f"{r[k]['mean']:.{digits}f} ± {r[k]['std']:.{digits}f}"
    lines = [f"**On seen prompts, over {len(seeds)} personalization seeds** (mean ± std over seeds; the pixel "
             "detector; toy FVD against real outline clips)", "",
             "| method | sampler | steps | outline style | colour | shape | direction | all three | toy FVD |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        few = f" ({r['seeds']} of the {len(seeds)} seeds)" if r["seeds"] < len(seeds) else ""
        lines.append(f"| {r['method']}{few} | {r['sampler']} | {r['steps']} | {cell(r, 'outline')} | "
                     f"{cell(r, 'colour')} | {cell(r, 'shape')} | {cell(r, 'direction')} | {cell(r, 'all')} | "
                     f"{cell(r, 'fvd', 1)} |")
    lines += ["", "**The targets, per personalization seed**", "", "| target | holds in | seeds |", "|---|---|---|"]
    for claim, per_seed in held.items():
        lines.append(f"| {claim} | {sum(per_seed)} of {len(per_seed)} | "
                     + ", ".join(f"{s}: {'yes' if h else 'no'}" for s, h in zip(seeds, per_seed)) + " |")
    lines += ["", "training time per seed (s): " + "; ".join(
        f"seed {s}: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) for s, t in times.items())]
    return "\n".join(lines) + "\n"


def evaluate(run: Path, seeds: list[int], budget: Budget, scales: list[float], device: str) -> dict:
    classifier = load_classifier(run / "classifier" / "classifier.safetensors")
    reference = real_reference(classifier, budget.reference_count, seed=50_000, style="outline")
    folder = run / "personalize"
    folder.mkdir(exist_ok=True)
    per_seed, held, times = {}, {}, {}
    for seed in seeds:
        def measure_seed(seed=seed) -> list[dict]:
            print(f"== seed {seed}")
            return evaluate_seed(seed_folder(run, seed), classifier, reference, budget,
                                 scales if seed == 0 else [], device, upper_bound=seed == 0)
        per_seed[seed] = measured(folder / f"seed{seed}.json", measure_seed)
        for claim, holds in claims(per_seed[seed], budget.reference_steps).items():
            held.setdefault(claim, []).append(holds)
        times[seed] = {k: v for k, v in read_times(seed_folder(run, seed)).items() if k in TRAINED}
    table = across_seeds(per_seed)
    results = {"seeds": seeds, "scales": scales, "table": table, "claims": held, "times_s": times,
               "eval_count": budget.eval_count, "eval_seeds": budget.eval_seeds, "per_seed": per_seed,
               # the fine-tune's recipe, named as toy/drift.py names its sweep's points
               "recipe": {"run": f"fine-tune, lr {budget.personalize_lr:g}", "steps": budget.personalize_steps}}
    write_json(folder / "results.json", results)
    write_text(folder / "results.txt", markdown(table, held, seeds, times))
    return results


def ship(run: Path, results: dict, to: Path) -> None:
    """Seed 0's personalized model and style LoRA (fp16, marked as the toy world's, so that sample.py fills in
    the toy's other weights and settings) and the table, into `to`."""
    for source, name in (("personalize/model.safetensors", "toy_outline_sd15.safetensors"),
                         ("style_lora/lora.safetensors", "toy_outline_lora.safetensors")):
        recast_file(run / source, to / name, torch.float16, {"toy_world": "outline"})
    shipped = {k: v for k, v in results.items() if k != "per_seed"}
    write_json(to / "personalized.json", shipped)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "toy"), help="a finished toy/run.py folder (its seed 0)")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="personalization seeds besides the run's 0")
    p.add_argument("--from-weights", help="make --run from this shipped folder (teacher, AnimateLCM, judge) and the "
                   "toy data, instead of a finished toy/run.py folder")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="the style LoRA's fusion weights a")
    p.add_argument("--quick", action="store_true", help="toy/run.py --quick's budget (for a --quick run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--ship", action="store_true", help="copy seed 0's model and LoRA and the table to --ship-to")
    p.add_argument("--ship-to", default=str(WEIGHTS))
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    run, budget = Path(args.run), (QUICK if args.quick else Budget())
    if args.from_weights:
        run.mkdir(parents=True, exist_ok=True)
        start_from_weights(run, Path(args.from_weights), FROM_WEIGHTS)
        run_stages(run, {"data": stages(run, budget, 0, args.device)["data"]})
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such run folder (train it with python -m toy.run --out {run})")
    seeds = [0, *(s for s in args.seeds if s != 0)]
    for seed in seeds:
        start = time.perf_counter()
        train_seed(run, seed, budget, args.device)
        print(f"== seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    if not args.skip_eval:
        results = evaluate(run, seeds, budget, args.scales, args.device)
        print((run / "personalize" / "results.txt").read_text())
        if args.ship:
            ship(run, results, Path(args.ship_to))
            print(f"shipped: {args.ship_to}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
