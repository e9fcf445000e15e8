"""The toy world's distillations over several training seeds: which of the paper's claims hold, in how many.

    python -m toy.seeds                     # seeds 1 and 2 beside runs/toy's own seed 0, then the table
    python -m toy.seeds --seeds 1 2 3 --run runs/toy --device cuda
    python -m toy.seeds --ship              # also copy the table and claims to toy/weights/seeds.json (the README's)

The teacher (data, VAE, image model, motion module) and the judge are the run's, trained once. Each
extra seed retrains the four distillations of toy/run.py (stage 1, stage 2, stage 2 with the plain
initialisation, the one-stage direct baseline) and stage 3 (the I2V encoder, the layout ControlNet and
its teacher-free LoRA) with that seed, with toy/stages.py's flags, into <run>/seeds/<seed>/; seed 0 is the
run itself. Every seed is then measured the same way as toy/run.py
measures (the same prompts and sampling seeds), and the teacher once. In the table each cell is the
mean +- std over training seeds of a seed's mean over the sampling sets; the sampling spread (the
std over sampling sets, averaged over training seeds) is given apart. Each claim is counted as
holding in k of n training seeds. Outputs: <run>/seeds/results.json and results.txt. As in
toy/run.py, a finished stage or measurement is kept: an interrupted command continues.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from runtime import cli
from runtime.files import write_json, write_text
from toy.classifier import load_classifier
from toy.constants import TEACHER_GUIDANCE
from toy.evaluate import Method, evaluate_text_to_video, mean_std, teacher_samplers
from toy.run import evaluate_stage3, measured, read_times, run_stages
from toy.stages import QUICK, Budget, load_distilled, load_stage3, stages, with_stage2_steps

ROOT = Path(__file__).resolve().parents[1]

DISTILLATIONS = ("stage1", "stage2", "stage2_plain_init", "direct")
STAGE3 = ("i2v", "layout_diffusion", "layout")  # on each seed's own stage 1 and 2
SHARED = ("data", "teacher_image", "teacher_motion")  # what every seed's distillations read from the run


def seed_folder(run: Path, seed: int) -> Path:
    return run if seed == 0 else run / "seeds" / str(seed)


def train_seed(run: Path, seed: int, budget: Budget, device: str) -> dict:
    """The four distillations and stage 3 with `seed`, on the run's teacher; returns the time of each stage (s)."""
    out = seed_folder(run, seed)
    for name in (*SHARED, "classifier"):
        if not (run / name / "DONE").exists():
            raise cli.UserError(f"{run / name} has not finished: run python -m toy.run --out {run} first")
    out.mkdir(parents=True, exist_ok=True)
    # the stages read the teacher from their own folder, toy/diagnose_stage3.py --run <seed folder> the judge
    for name in (*SHARED, "classifier"):
        link = out / name
        if not link.exists():
            link.symlink_to((run / name).resolve(), target_is_directory=True)
    torch.manual_seed(seed)
    todo = {name: made for name, made in stages(out, budget, seed, device).items()
            if name in DISTILLATIONS + STAGE3}
    return run_stages(out, todo)


# toy/run.py:load_distilled's models -> their rows' names
METHOD_NAMES = {"image_lcm": "image-only LCM", "animatelcm": "AnimateLCM (decoupled)",
                "plain_init": "AnimateLCM, plain init", "direct": "direct (VideoLCM-style)"}


def seed_methods(folder: Path, device: str) -> list[Method]:
    """The distilled models of one seed's folder, each sampled with the LCM sampler and no guidance."""
    models = load_distilled(folder, device)
    for model in models.values():
        model.unet.eval()
    return [Method(name, models[key]) for key, name in METHOD_NAMES.items()]


def by_cell(rows: list[dict]) -> dict:
    return {(r["method"], r["steps"]): r for r in rows}


def claims(teacher: dict, ours: dict, reference_steps: int = 50) -> dict[str, bool]:
    """The paper's claims, each true or false for one training seed (rows by (method, steps)); a claim
    whose cells were not measured is left out. Comparisons are of means over the same sampling sets
    (the same prompts and noise for every model)."""
    rows = {**teacher, **ours}
    ref = ("teacher DDIM", reference_steps)

    def fvd(method, steps):
        return rows[(method, steps)]["fvd"][0]

    def acc(method, steps):
        return rows[(method, steps)]["seen_accuracy"][0]

    ours_name, ddim, trailing = "AnimateLCM (decoupled)", "teacher DDIM", "teacher DDIM, trailing"
    tests = {
        f"4 steps: every attribute within 0.05 of the teacher's DDIM {reference_steps} (judge)": lambda: all(
            rows[(ours_name, 4)]["seen_attributes"][k][0] >= rows[ref]["seen_attributes"][k][0] - 0.05
            for k in rows[ref]["seen_attributes"]),
        f"4 steps: toy FVD within 1.2x the teacher's DDIM {reference_steps}":
            lambda: fvd(ours_name, 4) <= 1.2 * rows[ref]["fvd"][0],
        **{f"{n} step{'s' * (n > 1)}: far ahead of DDIM at {n} (lower FVD, accuracy +0.3)":
           (lambda n=n: fvd(ours_name, n) < fvd(ddim, n) and acc(ours_name, n) >= acc(ddim, n) + 0.3) for n in (1, 2)},
        "4 steps: lower toy FVD than DDIM 4 steps": lambda: fvd(ours_name, 4) < fvd(ddim, 4),
        # against the fair baseline: DDIM with trailing spacing starts every step count at t = 999
        **{f"{n} step{'s' * (n > 1)}: lower toy FVD than DDIM trailing at {n}":
           (lambda n=n: fvd(ours_name, n) < fvd(trailing, n)) for n in (1, 2, 4)},
        **{f"{n} step{'s' * (n > 1)}: prompt accuracy at least DDIM trailing's at {n}":
           (lambda n=n: acc(ours_name, n) >= acc(trailing, n)) for n in (1, 2, 4)},
        **{f"decoupled beats direct at {n} step{'s' * (n > 1)} (toy FVD)":
           (lambda n=n: fvd(ours_name, n) < fvd("direct (VideoLCM-style)", n)) for n in (1, 4)},
        "AnimateLCM init beats plain init at 4 steps (toy FVD)":
            lambda: fvd(ours_name, 4) < fvd("AnimateLCM, plain init", 4),
        "stage 2 beats image-only LCM at 4 steps (toy FVD)": lambda: fvd(ours_name, 4) < fvd("image-only LCM", 4),
    }
    return checked(tests)


STAGE3_ROWS = ("image_to_video", "layout", "layout_plugged_in")


def stage3_claims(rows: dict, ours: dict) -> dict[str, bool]:
    """Stage 3's targets and the paper's adaptation claim, each true or false for one training seed:
    `rows` is the seed's stage-3 rows (evaluate_stage3), `ours` its text-to-video rows by (method, steps)."""
    def at(name, steps):
        return next(r for r in rows[name] if r["steps"] == steps)

    tests = {
        "I2V, 4 steps, encoder alone: first frame >= 25 dB (colour-matched)":
            lambda: at("image_to_video", 4)["first_frame_psnr_matched"][0] >= 25,
        "I2V, 4 steps: motion accuracy >= 0.8": lambda: at("image_to_video", 4)["motion_accuracy"][0] >= 0.8,
        "I2V, 4 steps, first frame anchored: first frame >= 25 dB (colour-matched)":
            lambda: at("image_to_video", 4)["anchored_first_frame_psnr_matched"][0] >= 25,
        "I2V, 4 steps, first frame anchored: motion accuracy >= 0.8":
            lambda: at("image_to_video", 4)["anchored_motion_accuracy"][0] >= 0.8,
        "layout, 4 steps: mask IoU >= 0.75 of the real clips'":
            lambda: at("layout", 4)["mask_iou"][0] >= 0.75 * at("layout", 4)["real_mask_iou"][0],
        "layout, 4 steps: prompt accuracy within 0.05 of AnimateLCM's text-to-video":
            lambda: at("layout", 4)["accuracy"][0] >= ours[("AnimateLCM (decoupled)", 4)]["seen_accuracy"][0] - 0.05,
        **{f"teacher-free adaptation raises the plugged-in ControlNet's mask IoU at {n} step{'s' * (n > 1)}":
           (lambda n=n: at("layout", n)["mask_iou"][0] > at("layout_plugged_in", n)["mask_iou"][0]) for n in (1, 4)},
    }
    return checked(tests)


def checked(tests: dict) -> dict[str, bool]:
    """Each claim's test run: true or false; a claim whose cells were not measured (e.g. --quick's step
    counts) is left out."""
    held = {}
    for claim, test in tests.items():
        try:
            held[claim] = bool(test())
        except (KeyError, StopIteration):
            continue
    return held


def stage3_across_seeds(per_seed: dict[int, dict]) -> list[dict]:
    """Per step count: each stage-3 metric's mean and std over training seeds, and the sampling spread."""
    first = next(iter(per_seed.values()))
    table = []
    for i, row in enumerate(first["image_to_video"]):
        cells = {"steps": row["steps"], "seeds": len(per_seed)}
        for name in STAGE3_ROWS:
            for metric in (k for k in first[name][i] if k != "steps"):
                values = [rows[name][i][metric] for rows in per_seed.values()]
                cells[f"{name}.{metric}"] = {**dict(zip(("mean", "std"), mean_std([v[0] for v in values]))),
                                             "sampling_std": statistics.mean(v[1] for v in values)}
        table.append(cells)
    return table


def across_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per (method, steps): each metric's mean and std over training seeds of the seeds' means, and the
    sampling spread (the seeds' std over sampling sets, averaged)."""
    seeds = [by_cell(rows) for rows in per_seed.values()]
    table = []
    for key in seeds[0]:
        rows = [cells[key] for cells in seeds]
        metrics = {"fvd": [r["fvd"] for r in rows], "seen_accuracy": [r["seen_accuracy"] for r in rows],
                   "held_out_accuracy": [r["held_out_accuracy"] for r in rows],
                   **{k: [r["seen_attributes"][k] for r in rows] for k in rows[0]["seen_attributes"]},
                   **{f"detector_{k}": [r["seen_attributes_detector"][k] for r in rows]
                      for k in rows[0]["seen_attributes_detector"]}}
        table.append({"method": key[0], "steps": key[1], "seeds": len(rows),
                      **{m: {**dict(zip(("mean", "std"), mean_std([v[0] for v in values]))),
                             "sampling_std": statistics.mean(v[1] for v in values)} for m, values in metrics.items()}})
    return table


def markdown(table: list[dict], held: dict[str, list[bool]], times: dict[int, dict], sampling_sets: int,
             stage3: list[dict] = ()) -> str:
    def cell(r, metric, digits):
        return f"{r[metric]['mean']:.{digits}f} ± {r[metric]['std']:.{digits}f}"
    n = max(r["seeds"] for r in table)
    lines = [f"**Over {n} training seeds** (each cell: mean ± std over training seeds; sampling spread, the std over "
             f"{sampling_sets} sampling sets, in the last column; accuracy on seen prompts by the judge unless "
             "marked)", "",
             "| method | steps | toy FVD | all three | colour | shape | direction | held-out (all three) | "
             "direction (detector) | FVD sampling std |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['steps']} | {cell(r, 'fvd', 1)} | {cell(r, 'seen_accuracy', 2)} | "
                     f"{cell(r, 'colour', 2)} | {cell(r, 'shape', 2)} | {cell(r, 'direction', 2)} | "
                     f"{cell(r, 'held_out_accuracy', 2)} | {cell(r, 'detector_direction', 2)} | "
                     f"{r['fvd']['sampling_std']:.1f} |")
    if stage3:
        lines += ["", f"**Stage 3 over {stage3[0]['seeds']} training seeds** (mean ± std over training seeds; "
                  "the sampling spread under the table)", "",
                  "| steps | I2V first-frame PSNR (dB) | colour-matched (dB) | I2V motion accuracy | "
                  "I2V, first frame anchored: colour-matched / motion | layout mask IoU | "
                  "layout prompt accuracy | layout IoU / accuracy, not adapted |", "|---|---|---|---|---|---|---|---|"]
        for r in stage3:
            lines.append(f"| {r['steps']} | {cell(r, 'image_to_video.first_frame_psnr', 1)} | "
                         f"{cell(r, 'image_to_video.first_frame_psnr_matched', 1)} | "
                         f"{cell(r, 'image_to_video.motion_accuracy', 2)} | "
                         f"{cell(r, 'image_to_video.anchored_first_frame_psnr_matched', 1)} / "
                         f"{cell(r, 'image_to_video.anchored_motion_accuracy', 2)} | {cell(r, 'layout.mask_iou', 2)} | "
                         f"{cell(r, 'layout.accuracy', 2)} | {cell(r, 'layout_plugged_in.mask_iou', 2)} / "
                         f"{cell(r, 'layout_plugged_in.accuracy', 2)} |")
        last = stage3[-1]
        lines += ["", f"(sampling spread at {last['steps']} steps: colour-matched PSNR "
                      f"{last['image_to_video.first_frame_psnr_matched']['sampling_std']:.1f} dB, layout IoU "
                      f"{last['layout.mask_iou']['sampling_std']:.2f}; the real clips' mask IoU "
                      f"{last['layout.real_mask_iou']['mean']:.2f})"]
    lines += ["", "**The paper's claims, per training seed**", "", "| claim | holds in | seeds |", "|---|---|---|"]
    for claim, per_seed in held.items():
        lines.append(f"| {claim} | {sum(per_seed)} of {len(per_seed)} | "
                     + ", ".join(f"{s}: {'yes' if h else 'no'}" for s, h in zip(times, per_seed)) + " |")
    lines += ["", "training time per seed (s): " + "; ".join(
        f"seed {s}: stage 1 + stage 2 {t.get('stage1', 0) + t.get('stage2', 0):.0f}, direct {t.get('direct', 0):.0f}, "
        f"stage 3 {sum(t.get(k, 0) for k in STAGE3):.0f}" for s, t in times.items())]
    return "\n".join(lines) + "\n"


def evaluate(run: Path, seeds: list[int], budget: Budget, device: str) -> dict:
    """Every seed's rows (cached per seed), the teacher's once, the table and the claims, written to
    <run>/seeds/results.json and results.txt."""
    classifier = load_classifier(run / "classifier" / "classifier.safetensors")
    folder = run / "seeds"
    b = budget

    def teacher_rows():
        from sd15 import load_sd15
        teacher = load_sd15(run / "teacher_image" / "model.safetensors",
                            run / "teacher_motion" / "motion_module.safetensors", device=device)
        teacher.unet.eval()
        ddim, *baselines = teacher_samplers(teacher, TEACHER_GUIDANCE)  # DDIM leading also at the reference steps
        return (evaluate_text_to_video([ddim], (*b.eval_steps, b.reference_steps), classifier, b.eval_count,
                                       b.eval_seeds, b.reference_count) +
                evaluate_text_to_video(baselines, b.eval_steps, classifier, b.eval_count, b.eval_seeds,
                                       b.reference_count))

    print("== the teacher")
    teacher = measured(folder / "teacher.json", teacher_rows)
    per_seed, stage3, held, times = {}, {}, {}, {}
    for seed in seeds:
        print(f"== seed {seed}")
        per_seed[seed] = measured(folder / f"seed{seed}.json", lambda: evaluate_text_to_video(
            seed_methods(seed_folder(run, seed), device), b.eval_steps, classifier, b.eval_count, b.eval_seeds,
            b.reference_count))
        stage3[seed] = measured(folder / f"seed{seed}_stage3.json",
                                lambda: stage3_rows(seed_folder(run, seed), classifier, b, device))
        for claim, holds in {**claims(by_cell(teacher), by_cell(per_seed[seed]), b.reference_steps),
                             **stage3_claims(stage3[seed], by_cell(per_seed[seed]))}.items():
            held.setdefault(claim, []).append(holds)
        times[seed] = read_times(seed_folder(run, seed))
    table = [*across_seeds({0: teacher}), *across_seeds(per_seed)]
    stage3_table = stage3_across_seeds(stage3)
    results = {"seeds": seeds, "table": table, "stage3_table": stage3_table, "claims": held, "times_s": times,
               "teacher": teacher, "per_seed": per_seed, "per_seed_stage3": stage3}
    write_json(folder / "results.json", results)
    write_text(folder / "results.txt", markdown(table, held, times, b.eval_seeds, stage3_table))
    return results


def stage3_rows(folder: Path, classifier, budget: Budget, device: str) -> dict:
    """A seed's stage-3 rows; for the run itself (seed 0) the ones its evaluate stage measured the same way."""
    run_results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else {}
    if all(k in run_results for k in STAGE3_ROWS):
        return {k: run_results[k] for k in STAGE3_ROWS}
    return evaluate_stage3(load_stage3(folder, device), classifier, budget)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "toy"), help="a finished toy/run.py folder (its seed 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="training seeds besides the run's 0")
    p.add_argument("--quick", action="store_true", help="toy/run.py --quick's budget (for a --quick run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--ship", action="store_true", help="copy the table and the claims to --ship-to")
    p.add_argument("--ship-to", default=str(ROOT / "toy" / "weights" / "seeds.json"))
    p.add_argument("--stage2-steps", type=int, help=f"stage 2's steps (as toy/run.py's); default {Budget.stage2_steps}")
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    run, budget = Path(args.run), (QUICK if args.quick else Budget())
    budget = with_stage2_steps(budget, args.stage2_steps)
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such run folder (train it with python -m toy.run --out {run})")
    seeds = [s for s in args.seeds if s != 0]
    for seed in seeds:
        start = time.perf_counter()
        train_seed(run, seed, budget, args.device)
        print(f"== seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    if not args.skip_eval:
        results = evaluate(run, [0, *seeds], budget, args.device)
        print((run / "seeds" / "results.txt").read_text())
        print(f"written: {run / 'seeds' / 'results.json'}, results.txt")
        if args.ship:  # what the README's table and docs/figures.py read; the per-seed rows stay in the run
            shipped = {k: results[k] for k in ("seeds", "table", "stage3_table", "claims", "times_s")}
            write_json(args.ship_to, {**shipped, "eval_count": budget.eval_count, "eval_seeds": budget.eval_seeds})
            print(f"shipped: {args.ship_to}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
