"""AnimateLCM's own design claims under the conditions they answer to (docs/toy-world.md, section 4.4).

    python -m toy.conditions --run runs/toy            # train and measure all of it (training seeds 0, 1, 2)
    python -m toy.conditions --run runs/toy --ship     # also toy/weights/conditions.json (the docs' tables)
    python -m toy.conditions --run runs/toy --quick    # a --quick run's budget: a few steps of everything

The paper distils the image half on clean images and only the motion half on video because public video
(WebVid) is worse than curated images: watermarks, softer frames, compression (toy/world.py:WEBVID). Here
every video stage learns from the clips either as drawn ("clean") or under that condition ("webvid"); the
stills stay clean. On the run's teacher image model and judge, this trains:
  - the teacher's motion module under each condition (clean: the run's own; webvid: the same recipe on
    the degraded clips), once;
  - per training seed: stage 1 (on the clean stills; seed 0 is the run's), and under each condition
    stage 2 (AnimateLCM's initialisation), stage 2 with the plain initialisation, and the one-stage
    direct baseline at the cost of stages 1 + 2, all drawing w ~ U[2, 5];
  - the stage-1 schedule study (seed 0, clean): stage 1 distilled under sqrt_beta_linear, the mirror of
    SD1.5's training schedule, then stage 2 under the beta_linear that it samples with.
Both stage-2 runs keep their motion module at LEARNING_CURVE steps (the learning curves). Everything is
measured the way toy/run.py measures, against *clean* real clips, with the share of videos that draw the
watermark (toy/detect.py:has_watermark). Outputs: <run>/conditions/results.json and results.txt; a finished
stage or measurement is kept, so an interrupted command continues.
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import train_image
import train_video
from runtime import cli
from runtime.files import write_json, write_output, write_text
from sd15 import load_sd15
from toy.classifier import attribute_accuracy, load_classifier
from toy.constants import TEACHER_GUIDANCE, WEIGHTS
from toy.evaluate import Method, evaluate_text_to_video, mean_std
from toy.run import measured, read_times, run_stages
from toy.stages import QUICK, Budget, stage1_args, stage2_args, stages

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("clean", "webvid")
LEARNING_CURVE = (10, 25, 50, 100, 200)  # stage-2 steps at which both initialisations are measured
SHARED = ("data", "teacher_image", "classifier")  # the run's, for every condition and seed
EVAL_STEPS = (1, 2, 4)


def folder(run: Path, condition: str, seed: int) -> Path:
    return run / "conditions" / condition / str(seed)


def curve_points(budget: Budget) -> tuple[int, ...]:
    """The learning curve's step counts within this budget's stage 2 (--quick: every step)."""
    points = tuple(p for p in LEARNING_CURVE if p <= budget.stage2_steps)
    return points if budget.stage2_steps in points else (*points, budget.stage2_steps) if points else \
        tuple(range(1, budget.stage2_steps + 1))


def link(out: Path, name: str, source: Path) -> None:
    """out/name -> source (a finished stage of another folder), unless out/name exists."""
    if not (out / name).exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / name).symlink_to(source.resolve(), target_is_directory=True)


def with_steps(args: list[str], steps: int) -> list[str]:
    """A script's command line with --steps replaced."""
    i = args.index("--steps")
    return [*args[:i + 1], str(steps), *args[i + 2:]]


def with_snapshots(script, args: list[str], product: Path, points: tuple[int, ...], score=None):
    """make() for run_stages: the script's run, stopped and continued (bit for bit: its --resume) at each of
    `points`, its product copied to snapshots/stepNNNN.safetensors each time."""
    def make():
        for p in points:
            snapshot = product.parent / "snapshots" / f"step{p:04d}.safetensors"
            if snapshot.exists():
                continue
            script.main(with_steps(args, p), score=score)
            snapshot.parent.mkdir(exist_ok=True)
            shutil.copy(product, snapshot)
    return make


def study_stages(run: Path, condition: str, seed: int, b: Budget, device: str) -> dict:
    """The stages one (condition, seed) folder trains, name -> (product, make), in order."""
    out = folder(run, condition, seed)
    for name in SHARED:
        link(out, name, run / name)
    if condition == "clean":
        link(out, "teacher_motion", run / "teacher_motion")
    elif seed != 0:
        link(out, "teacher_motion", folder(run, condition, 0) / "teacher_motion")
    if seed == 0:
        link(out, "stage1", run / "stage1")
    elif condition != "clean":  # stage 1 learns from the clean stills: one per seed, for both conditions
        if not (folder(run, "clean", seed) / "stage1" / "DONE").exists():
            raise cli.UserError(f"training seed {seed}: the clean condition's stage 1 comes first (it serves both "
                                f"conditions): python -m toy.conditions --run {run} --conditions clean --seeds {seed}")
        link(out, "stage1", folder(run, "clean", seed) / "stage1")
    made = stages(out, b, seed, device, condition)
    teacher = out / "teacher_image" / "model.safetensors"
    teacher_motion = out / "teacher_motion" / "motion_module.safetensors"
    lora = out / "stage1" / "lora.safetensors"
    points = curve_points(b)
    todo = {}
    if condition != "clean" and seed == 0:
        todo[f"data_{condition}"] = made[f"data_{condition}"]
        todo["teacher_motion"] = made["teacher_motion"]
    if condition == "clean" and seed != 0:
        todo["stage1"] = made["stage1"]
    quiet = ["--val-every", "0"]  # the snapshots are measured afterwards
    for name, init in (("stage2", "animatelcm"), ("stage2_plain_init", "plain")):
        args = [*stage2_args(out, name, teacher, teacher_motion, lora, b, b.stage2_steps, seed, device, condition),
                "--init", init, *quiet]
        product = out / name / "motion_module.safetensors"
        todo[name] = (product, with_snapshots(train_video, args, product, points))
    todo["direct"] = made["direct"]
    if condition == "clean" and seed == 0:  # the stage-1 schedule study
        todo["stage1_sqrt"] = (out / "stage1_sqrt" / "lora.safetensors", lambda: train_image.main(
            [*stage1_args(out, "stage1_sqrt", teacher, b, seed, device), "--beta-schedule", "sqrt_beta_linear"]))
        args = [*stage2_args(out, "stage2_sqrt", teacher, teacher_motion, out / "stage1_sqrt" / "lora.safetensors",
                             b, b.stage2_steps, seed, device, condition), *quiet]
        todo["stage2_sqrt"] = (out / "stage2_sqrt" / "motion_module.safetensors",
                               lambda: train_video.main(args))
    return todo


def train(run: Path, seeds: list[int], b: Budget, device: str, conditions=CONDITIONS) -> None:
    for name in (*SHARED, "teacher_motion", "stage1"):
        if not (run / name / "DONE").exists():
            raise cli.UserError(f"{run / name} has not finished: run python -m toy.run --out {run} first "
                                "(or --from-weights toy/weights)")
    for seed in seeds:
        for condition in conditions:
            print(f"== {condition}, training seed {seed}", flush=True)
            torch.manual_seed(seed)
            run_stages(folder(run, condition, seed), study_stages(run, condition, seed, b, device))


# ---- measuring -----------------------------------------------------------------------------------------

def models(out: Path, device: str, snapshots: bool = True) -> dict:
    """Method name -> (model, step counts) of one (condition, seed) folder; with `snapshots`, both
    initialisations at each learning-curve point ("stage 2, AnimateLCM init, at step 50", ...)."""
    teacher = out / "teacher_image" / "model.safetensors"
    lora = [(out / "stage1" / "lora.safetensors", 1.0)]
    found = {"image-only LCM": load_sd15(teacher, out / "teacher_motion" / "motion_module.safetensors", lora,
                                        device=device),
             "AnimateLCM (decoupled)": load_sd15(teacher, out / "stage2" / "motion_module.safetensors", lora,
                                                 device=device),
             "direct (one stage)": load_sd15(teacher, out / "direct" / "motion_module.safetensors",
                                             [(out / "direct" / "lora.safetensors", 1.0)], device=device)}
    if (out / "stage2_sqrt").exists():
        sqrt_lora = [(out / "stage1_sqrt" / "lora.safetensors", 1.0)]
        found["image-only LCM, stage 1 under sqrt_beta_linear"] = load_sd15(
            teacher, out / "teacher_motion" / "motion_module.safetensors", sqrt_lora, device=device)
        found["AnimateLCM, stage 1 under sqrt_beta_linear"] = load_sd15(
            teacher, out / "stage2_sqrt" / "motion_module.safetensors", sqrt_lora, device=device)
    for name, init in (("stage2", "AnimateLCM init"), ("stage2_plain_init", "plain init")):
        for snapshot in sorted((out / name / "snapshots").glob("step*.safetensors")) if snapshots else ():
            steps = int(snapshot.stem[4:])
            found[f"stage 2, {init}, at step {steps}"] = load_sd15(teacher, snapshot, lora, device=device)
    for model in found.values():
        model.unet.eval()
    return found


def evaluate_folder(out: Path, classifier, b: Budget, device: str) -> list[dict]:
    methods = [Method(name, model) for name, model in models(out, device).items()]
    return evaluate_text_to_video(methods, EVAL_STEPS, classifier, b.eval_count, b.eval_seeds, b.reference_count)


def real_clips_row(condition: str, classifier, b: Budget) -> list[dict]:
    """The real clips under `condition` measured like a method's videos (the same sampling sets' prompts): what
    the condition itself does to the toy FVD against clean clips, to the judge's accuracy and to the mark."""
    from toy.classifier import frechet_distance, judge, prompt_accuracy, real_reference, to_model
    from toy.detect import has_watermark
    from toy.world import CONDITIONS as DEGRADATIONS, SEEN, sample_videos
    reference = real_reference(classifier, b.reference_count, seed=50_000)
    fvd, accuracy, marked, direction = [], [], [], []
    for s in range(b.eval_seeds):
        videos, _, clips = sample_videos(b.eval_count, 60_000 + s, SEEN, condition=DEGRADATIONS[condition])
        videos = to_model(videos)
        features, preds = judge(classifier, videos)
        fvd.append(frechet_distance(features, reference))
        accuracy.append(prompt_accuracy(preds, clips))
        marked.append(float(has_watermark(videos).float().mean()))
        direction.append(attribute_accuracy(preds, clips)["direction"])
    return [{"method": "real clips", "steps": 0, "fvd": mean_std(fvd), "seen_accuracy": mean_std(accuracy),
             "watermark": mean_std(marked), "seen_attributes": {"direction": mean_std(direction)}}]


def evaluate_teacher(out: Path, classifier, b: Budget, device: str) -> list[dict]:
    """The condition's teacher: DDIM at its many-step reference and with trailing spacing at 1, 2 and 4."""
    teacher = load_sd15(out / "teacher_image" / "model.safetensors",
                        out / "teacher_motion" / "motion_module.safetensors", device=device)
    teacher.unet.eval()
    return (evaluate_text_to_video([Method("teacher DDIM", teacher, "ddim", TEACHER_GUIDANCE)],
                                   (b.reference_steps,), classifier, b.eval_count, b.eval_seeds, b.reference_count) +
            evaluate_text_to_video([Method("teacher DDIM, trailing", teacher, "ddim", TEACHER_GUIDANCE, "trailing")],
                                   EVAL_STEPS, classifier, b.eval_count, b.eval_seeds, b.reference_count))


METRICS = ("fvd", "seen_accuracy", "watermark")
SCHEDULE_ROWS = ("image-only LCM", "AnimateLCM (decoupled)", "image-only LCM, stage 1 under sqrt_beta_linear",
                 "AnimateLCM, stage 1 under sqrt_beta_linear")  # the schedule study: clean clips, training seed 0


def across_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per (method, steps): each metric's mean and std over training seeds of the seeds' means, and the
    sampling spread (the std over sampling sets, averaged over seeds)."""
    cells = {}
    for rows in per_seed.values():
        for r in rows:
            cells.setdefault((r["method"], r["steps"]), []).append(r)
    table = []
    for (method, steps), rows in cells.items():
        metrics = {m: [r[m] for r in rows] for m in METRICS}
        metrics["direction"] = [r["seen_attributes"]["direction"] for r in rows]
        table.append({"method": method, "steps": steps, "seeds": len(rows),
                      **{m: {**dict(zip(("mean", "std"), mean_std([v[0] for v in values]))),
                             "sampling_std": statistics.mean(v[1] for v in values)}
                         for m, values in metrics.items()}})
    return table


def steps_name(n: int) -> str:
    return f"{n} step{'s' * (n > 1)}"


def claims(rows: list[dict], watermarked: bool = False) -> dict[str, bool]:
    """AnimateLCM's design claims for one (condition, seed), each true or false; a claim whose cells were not
    measured is left out. Comparisons are of means over the same sampling sets (the same prompts and noise)."""
    cell = {(r["method"], r["steps"]): r for r in rows}
    held = {}

    def compare(claim, a, b, n, metric, better):
        if (a, n) in cell and (b, n) in cell:
            held[claim] = better(cell[(a, n)][metric][0], cell[(b, n)][metric][0])
    for n in EVAL_STEPS:
        compare(f"decoupled beats direct at {steps_name(n)} (toy FVD)", "AnimateLCM (decoupled)",
                "direct (one stage)", n, "fvd", float.__lt__)
        compare(f"decoupled at least as accurate as direct at {steps_name(n)}", "AnimateLCM (decoupled)",
                "direct (one stage)", n, "seen_accuracy", float.__ge__)
        if watermarked:
            compare(f"decoupled draws the watermark less often than direct at {steps_name(n)}",
                    "AnimateLCM (decoupled)", "direct (one stage)", n, "watermark", float.__lt__)
        compare(f"stage 2 beats image-only LCM at {steps_name(n)} (toy FVD)", "AnimateLCM (decoupled)",
                "image-only LCM", n, "fvd", float.__lt__)
    points = sorted({int(m.split()[-1]) for m, _ in cell if m.startswith("stage 2, plain init")})
    for p in points:
        for n in (1, 4):
            compare(f"AnimateLCM init beats plain init at stage-2 step {p}, {steps_name(n)} (toy FVD)",
                    f"stage 2, AnimateLCM init, at step {p}", f"stage 2, plain init, at step {p}", n, "fvd",
                    float.__lt__)
    return held


def evaluate(run: Path, seeds: list[int], b: Budget, device: str, conditions=CONDITIONS) -> dict:
    classifier = load_classifier(run / "classifier" / "classifier.safetensors")
    base = run / "conditions"
    teachers, per_seed, held, times = {}, {}, {}, {}
    for condition in conditions:
        print(f"== the teacher, {condition}", flush=True)
        teachers[condition] = measured(base / f"{condition}_teacher.json",
                                       lambda: real_clips_row(condition, classifier, b) +
                                       evaluate_teacher(folder(run, condition, 0), classifier, b, device))
        for seed in seeds:
            print(f"== {condition}, training seed {seed}", flush=True)
            out = folder(run, condition, seed)
            per_seed.setdefault(condition, {})[seed] = measured(
                base / f"{condition}_seed{seed}.json", lambda: evaluate_folder(out, classifier, b, device))
            for claim, holds in claims(per_seed[condition][seed], watermarked=condition != "clean").items():
                held.setdefault(f"{condition}: {claim}", []).append(holds)
            times[f"{condition}/{seed}"] = read_times(out)
    table = [{"condition": c, **row} for c in conditions
             for row in across_seeds({0: teachers[c]}) + across_seeds(per_seed[c])]
    schedule = [r for r in per_seed.get("clean", {}).get(0, []) if r["method"] in SCHEDULE_ROWS]
    results = {"seeds": seeds, "conditions": list(conditions), "table": table, "claims": held, "times_s": times,
               "eval_count": b.eval_count, "eval_seeds": b.eval_seeds, "curve_points": list(curve_points(b)),
               "schedule": schedule}
    write_samples(run, b, device, conditions, base / "samples.npz")
    write_json(base / "results.json", {**results, "per_seed": per_seed, "teachers": teachers})
    write_text(base / "results.txt", markdown(results))
    return results


SAMPLED = (("real clips", 0), ("teacher DDIM", 50), ("AnimateLCM (decoupled)", 4), ("direct (one stage)", 4),
           ("AnimateLCM (decoupled)", 1), ("direct (one stage)", 1))  # the samples figure's rows, per condition
SAMPLES = 4  # videos a row: the first prompts of the first sampling set, with its noise
SAMPLED_FRAMES = (0, 3, 7)  # the frames kept of each


def write_samples(run: Path, b: Budget, device: str, conditions, path: Path) -> None:
    """uint8 videos [SAMPLES, len(SAMPLED_FRAMES), H, W, 3] of each SAMPLED row under each condition (training seed 0), the same
    prompts and noise as the measurement's first sampling set, into one .npz (keys "condition/method/steps"):
    what the docs' figure of samples shows, watermark or not."""
    import numpy as np
    from media.video import to_uint8
    from toy.evaluate import prompts, toy_videos
    from toy.world import CONDITIONS as DEGRADATIONS, SEEN, sample_videos
    if path.exists():
        return
    captions, _ = prompts(SAMPLES, 60_000, SEEN)
    arrays = {}
    for condition in conditions:
        out = folder(run, condition, 0)
        found = {"teacher DDIM": load_sd15(out / "teacher_image" / "model.safetensors",
                                           out / "teacher_motion" / "motion_module.safetensors", device=device),
                 **models(out, device, snapshots=False)}
        for method, steps in SAMPLED:
            if method == "real clips":
                videos, _, _ = sample_videos(SAMPLES, 60_000, SEEN, condition=DEGRADATIONS[condition])
            else:
                found[method].unet.eval()
                sampler, guidance = ("ddim", TEACHER_GUIDANCE) if method.startswith("teacher") else ("lcm", 1.0)
                made = toy_videos(found[method], captions, steps, sampler, guidance, seed=0)
                videos = np.stack([to_uint8(v / 2 + 0.5) for v in made])
            arrays[f"{condition}/{method}/{steps}"] = videos[:, list(SAMPLED_FRAMES)]
    buffer = io.BytesIO()  # written by Python, so that a failed write keeps its errno (runtime/files.py)
    np.savez_compressed(buffer, **arrays)
    write_output(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def markdown(results: dict) -> str:
    """The run's tables: every row (mean ± std over training seeds; the teacher's and the real clips' over
    sampling sets), then the claims per seed."""
    def cell(c, digits):
        return f"{c['mean']:.{digits}f} ± {c['std'] if c.get('std') else c['sampling_std']:.{digits}f}"
    lines = ["| condition | method | steps | seeds | toy FVD vs clean clips | prompt accuracy | watermark | direction |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["table"]:
        lines.append(f"| {r['condition']} | {r['method']} | {r['steps']} | {r['seeds']} | {cell(r['fvd'], 1)} | "
                     f"{cell(r['seen_accuracy'], 2)} | {cell(r['watermark'], 2)} | {cell(r['direction'], 2)} |")
    lines += ["", "| claim | holds in |", "|---|---|"]
    lines += [f"| {claim} | {sum(v)} of {len(v)} |" for claim, v in results["claims"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "toy"), help="a finished toy/run.py folder (its seed 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--quick", action="store_true", help="toy/run.py --quick's budget (for a --quick run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--ship", action="store_true", help="copy the tables and the claims to --ship-to")
    p.add_argument("--ship-to", default=str(WEIGHTS / "conditions.json"))
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    run, budget = Path(args.run), (QUICK if args.quick else Budget())
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such run folder (train it with python -m toy.run --out {run})")
    start = time.perf_counter()
    train(run, args.seeds, budget, args.device, args.conditions)
    print(f"== trained in {time.perf_counter() - start:.0f} s", flush=True)
    if not args.skip_eval:
        results = evaluate(run, args.seeds, budget, args.device, args.conditions)
        if args.ship:  # the tables' numbers, and the samples' figure's videos beside them
            write_json(Path(args.ship_to), results)
            samples = Path(args.ship_to).with_name(Path(args.ship_to).stem + "_samples.npz")
            write_output(samples, lambda tmp: shutil.copyfile(run / "conditions" / "samples.npz", tmp))
            print(f"shipped: {args.ship_to}, {samples}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
