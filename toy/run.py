"""The toy world end to end: data, VAE, teachers, the three AnimateLCM stages, the judge, the results.

    python -m toy.run                    # the full run (times per stage are printed and saved)
    python -m toy.run --quick            # every stage for a few steps: a smoke test
    python -m toy.run --ship             # also copy the trained weights to toy/weights/ (sample.py's default)
    python -m toy.run --from-weights toy/weights --ship   # keep the shipped teachers and stage 1: about an hour
    python -m toy.run --condition webvid --from-weights toy/weights --out runs/toy_webvid   # the video stages
                                         # on clips with public video's defects (toy/world.py:WEBVID)

The stages and their flags are in toy/stages.py. A stage whose outputs exist is skipped, so an
interrupted run continues where it stopped (delete runs/toy/<stage>/ to redo one). Outputs in --out:
data/, one folder per stage, times.json, results.json and results.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from runtime import cli
from runtime.files import write_json, write_text
from runtime.folder import load_checkpoint
from runtime.weights import read_metadata, read_state_dict, save_safetensors
from toy.classifier import load_classifier
from toy.constants import (BETA_SCHEDULE, FRAMES, ORIGINAL_STEPS, RESOLUTION, SCHEDULE, SHIPPED, TEACHER_GUIDANCE,
                           WEIGHTS)
from toy.stages import QUICK, Budget, load_run, stages, with_stage2_steps
from toy.world import CONDITIONS

ROOT = Path(__file__).resolve().parents[1]


def evaluate(out: Path, b: Budget, device: str) -> dict:
    from toy.evaluate import Method, evaluate_text_to_video, teacher_samplers
    models = load_run(out, device)
    classifier = load_classifier(out / "classifier" / "classifier.safetensors")
    guidance = TEACHER_GUIDANCE
    methods = [*teacher_samplers(models["teacher"], guidance),
               Method("image-only LCM", models["image_lcm"], "lcm"),
               Method("AnimateLCM (decoupled)", models["animatelcm"], "lcm"),
               Method("direct (VideoLCM-style)", models["direct"], "lcm")]
    print("text-to-video:")
    table = evaluate_text_to_video(methods, b.eval_steps, classifier, b.eval_count, b.eval_seeds, b.reference_count)
    table += evaluate_text_to_video([methods[0]], (b.reference_steps,), classifier, b.eval_count, b.eval_seeds,
                                    b.reference_count)
    print("stage-2 initialisation ablation:")
    ablation = evaluate_text_to_video([Method("AnimateLCM init (target without LoRA)", models["animatelcm"]),
                                       Method("plain init (target = online)", models["plain_init"])],
                                      (1, 2, 4), classifier, b.eval_count, b.eval_seeds, b.reference_count)
    stage3 = evaluate_stage3(models, classifier, b)
    return {"text_to_video": table, "init_ablation": ablation, **stage3,
            "guidance": guidance, "eval_count": b.eval_count, "eval_seeds": b.eval_seeds}


STAGE3_STEPS = (1, 2, 4)


def evaluate_stage3(models: dict, classifier, b: Budget) -> dict:
    """Stage 3's rows ("image_to_video", "layout", "layout_plugged_in") for load_stage3's models."""
    from toy.evaluate import evaluate_image_to_video, evaluate_layout
    print("image-to-video:")
    i2v = evaluate_image_to_video(models["i2v"], STAGE3_STEPS, classifier, b.eval_count, b.eval_seeds)
    print("layout control:")
    layout = evaluate_layout(models["layout"], STAGE3_STEPS, classifier, b.eval_count, b.eval_seeds)
    print("layout control, the diffusion ControlNet plugged in without adaptation:")
    plugged_in = evaluate_layout(models["layout_plugged_in"], STAGE3_STEPS, classifier, b.eval_count, b.eval_seeds)
    return {"image_to_video": i2v, "layout": layout, "layout_plugged_in": plugged_in}


def markdown(results: dict) -> str:
    """The results as the README's tables: mean ± seed-to-seed std per cell."""
    def cell(pair, digits):
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    t2v = results["text_to_video"]
    steps = sorted({r["steps"] for r in t2v})
    methods = list(dict.fromkeys(r["method"] for r in t2v))
    lines = []
    for metric, title, digits in (("fvd", "toy FVD (lower is better)", 1),
                                  ("seen_accuracy", "prompt accuracy, seen prompts", 2),
                                  ("held_out_accuracy", "prompt accuracy, held-out prompts", 2)):
        lines += [f"**{title}**", "", "| method | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for m in methods:
            by_steps = {r["steps"]: r for r in t2v if r["method"] == m}
            lines.append(f"| {m} | " + " | ".join(cell(by_steps[s][metric], digits) if s in by_steps else ""
                                                  for s in steps) + " |")
        lines.append("")
    ablation = results["init_ablation"]
    a_steps = sorted({r["steps"] for r in ablation})
    lines += ["**stage-2 initialisation (toy FVD / seen accuracy)**", "",
              "| target initialisation | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in a_steps) + " |",
              "|---|" + "---|" * len(a_steps)]
    for m in dict.fromkeys(r["method"] for r in ablation):
        by_steps = {r["steps"]: r for r in ablation if r["method"] == m}
        lines.append(f"| {m} | " + " | ".join(f"{cell(by_steps[s]['fvd'], 1)} / {cell(by_steps[s]['seen_accuracy'], 2)}"
                                              for s in a_steps) + " |")
    lines += ["", "**image-to-video and layout control (stage 3)**", "",
              "| steps | I2V first-frame PSNR (dB) | colour-matched (dB) | I2V motion accuracy | "
              "I2V, first frame anchored: PSNR / colour-matched / motion | layout mask IoU | "
              "layout prompt accuracy | layout IoU / accuracy, not adapted |", "|---|---|---|---|---|---|---|---|"]
    for i2v, layout, plugged in zip(results["image_to_video"], results["layout"], results["layout_plugged_in"]):
        lines.append(f"| {i2v['steps']} | {cell(i2v['first_frame_psnr'], 1)} | "
                     f"{cell(i2v['first_frame_psnr_matched'], 1)} | "
                     f"{cell(i2v['motion_accuracy'], 2)} | {cell(i2v['anchored_first_frame_psnr'], 1)} / "
                     f"{cell(i2v['anchored_first_frame_psnr_matched'], 1)} / "
                     f"{cell(i2v['anchored_motion_accuracy'], 2)} | "
                     f"{cell(layout['mask_iou'], 2)} | {cell(layout['accuracy'], 2)} | "
                     f"{cell(plugged['mask_iou'], 2)} / {cell(plugged['accuracy'], 2)} |")
    if results["layout"]:
        lines += ["", f"(layout mask IoU of the real clips by the same measure: "
                      f"{results['layout'][0]['real_mask_iou'][0]:.2f})"]
    times = results.get("times_s", {})
    lines += ["", "time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()) +
              f"; total {sum(times.values()) / 60:.0f} min"]
    return "\n".join(lines) + "\n"


def recast_file(source: Path, dest: Path, dtype: torch.dtype, metadata: dict | None = None) -> None:
    """Copy a safetensors file with its floating-point tensors cast to `dtype`, its metadata kept (and
    `metadata` added), written atomically, as every save of the project."""
    state = read_state_dict(source)
    save_safetensors({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, dest,
                     {**read_metadata(source), **(metadata or {})})


def ship(out: Path, folder: Path) -> None:
    """The weights sample.py uses by default, stored in fp16 (a few MB), with their settings."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in SHIPPED.items():
        judge = name == "toy_classifier.safetensors"  # the judge stays fp32: its features feed the toy FVD
        recast_file(out / source, folder / name, torch.float32 if judge else torch.float16)
    settings = {"frames": FRAMES, "height": RESOLUTION, "width": RESOLUTION, "original_steps": ORIGINAL_STEPS,
                "beta_schedule": BETA_SCHEDULE, "beta_end": SCHEDULE.beta_end,
                "lora_scale": 1.0, "guidance_teacher": TEACHER_GUIDANCE,
                "anchor_first_frame": True}  # sample.py --image: 23.4 -> 26.3 dB at 4 steps (toy-world.md 6.4)
    write_json(folder / "toy.json", settings)


# what --from-weights keeps: the stages before stage 2 and those that do not depend on it ("vae" has no file
# of its own there: its weights are inside the teacher's); --keep-shipped keeps every shipped stage
KEPT_FROM_WEIGHTS = ("vae", "teacher_image", "teacher_motion", "stage1", "layout_diffusion", "classifier")
SHIPPED_STAGES = (*KEPT_FROM_WEIGHTS, "stage2", "i2v", "layout")
VIDEO_TRAINED = ("teacher_motion", "layout_diffusion", "stage2", "i2v", "layout")  # what learns from the clips


def start_from_weights(out: Path, folder: Path, keep: tuple[str, ...] = KEPT_FROM_WEIGHTS) -> None:
    """Make `out` a run whose stages `keep` are those of a shipped folder (upcast to fp32, their times
    copied from the training seed 0 of its seeds.json, if it has one): by default its VAE, teachers, stage-1 LoRA, diffusion ControlNet and
    judge, so that only the stages that depend on stage 1 train (stage 2, its ablations, the rest of
    stage 3); with every shipped stage, only what is not shipped trains (the ablations' models)."""
    if all((out / stage / "DONE").exists() for stage in keep):
        print(f"== {out} already has {', '.join(keep)} (from --from-weights or its own run): keeping them")
        return
    if any((out / stage / "DONE").exists() for stage in keep):
        raise cli.UserError(f"{out} has trained stages of its own; give --from-weights a new --out folder")
    kept = {name: source for name, source in SHIPPED.items() if source.split("/")[0] in keep}
    missing = [name for name in kept if not (folder / name).exists()]
    if missing:
        raise cli.UserError(f"--from-weights {folder}: missing {', '.join(missing)} (a folder written by "
                            "python toy/run.py --ship)")
    for name, source in kept.items():
        (out / source).parent.mkdir(parents=True, exist_ok=True)
        recast_file(folder / name, out / source, torch.float32)
    shipped = folder / "seeds.json"  # toy/seeds.py --ship: the shipped run is its training seed 0
    shipped_times = json.loads(shipped.read_text()).get("times_s", {}).get("0", {}) if shipped.exists() else {}
    times = {**read_times(out), **{k: v for k, v in shipped_times.items() if k in keep}}
    write_json(out / "times.json", times)
    for stage in keep:
        write_text(out / stage / "DONE", "")
    print(f"== kept from {folder}: {', '.join(keep)}")


def check_finished(folder: Path, product: Path) -> None:
    """A stage that returned without reaching its last step or writing its product stops the run here."""
    if (folder / "log.jsonl").exists() and (folder / "checkpoint.pt").exists():
        settings = load_checkpoint(folder / "checkpoint.pt")
        if settings["step"] < settings["settings"]["steps"]:
            raise SystemExit(f"{folder.name} stopped at step {settings['step']} of {settings['settings']['steps']}; "
                             "run the same command again to continue it")
    if not product.exists():
        raise SystemExit(f"{folder.name} finished without writing {product}")


def read_times(out: Path) -> dict:
    """Seconds per stage of the run in `out` so far (its times.json)."""
    times_file = out / "times.json"
    return json.loads(times_file.read_text()) if times_file.exists() else {}


def measured(path: Path, measure):
    """What `path` holds, measured (and written there, whole or not at all) unless an earlier command did: the
    studies' cache, so that an interrupted measurement continues."""
    if path.exists():
        return json.loads(path.read_text())
    rows = measure()
    write_json(path, rows)
    return rows


def run_stages(out: Path, todo: dict) -> dict:
    """Run each stage of `todo` (name -> (product, make)) that has not finished, in order, adding its
    time in seconds to out/times.json; a finished stage (its DONE file) is skipped. Returns the times."""
    times_file, times = out / "times.json", read_times(out)
    for name, (product, make) in todo.items():
        done = out / name / "DONE"  # written only when the stage ran to its last step
        if done.exists():
            print(f"== {name}: done ({product.relative_to(out)})")
            continue
        print(f"== {name}")
        start = time.perf_counter()
        try:
            make()
        except cli.Interrupted as e:  # the stage saved its checkpoint; this command continues it
            raise cli.Interrupted(f"the {name} stage was stopped with its checkpoint saved: run this command again "
                                  "to continue it", e.code) from e
        except cli.WriteError as e:  # a full disk: what the stage saved stays whole; this command continues it
            raise e.retold(f"run this command again to continue the {name} stage") from e
        check_finished(out / name, product)
        write_text(done, "")  # (its folder made if the stage writes into another's, as data_webvid does)
        times[name] = round(time.perf_counter() - start, 1) + times.get(name, 0)
        write_json(times_file, times)
        print(f"== {name}: {times[name]:.0f} s")
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "toy"))
    p.add_argument("--quick", action="store_true", help="a few steps of everything (minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ship", action="store_true", help="copy the weights to toy/weights/ at the end")
    p.add_argument("--ship-to", default=str(WEIGHTS))
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--from-weights", help="keep this shipped folder's VAE, teachers, stage 1, diffusion ControlNet "
                   "and judge; train stage 2 and what depends on it (a new --out)")
    p.add_argument("--keep-shipped", action="store_true", help="with --from-weights: keep every shipped stage "
                   "(stage 2 and stage 3 too); train only what is not shipped (the ablations' models)")
    p.add_argument("--stage2-steps", type=int, help="stage 2's steps (and the direct baseline's, which follow); "
                   f"default {Budget.stage2_steps}")
    p.add_argument("--condition", default="clean", choices=CONDITIONS, help="the video data: the clips as drawn "
                   "(clean) or with the defects of public video, a watermark, softer frames, compression (webvid: "
                   "toy/world.py:WEBVID); the stills stay clean")
    args = p.parse_args(argv)
    if cli.device_problem(args.device):  # before hours of work, not at the first stage that uses it
        raise cli.UserError(cli.device_problem(args.device))
    out, budget = Path(args.out), (QUICK if args.quick else Budget())
    budget = with_stage2_steps(budget, args.stage2_steps)
    out.mkdir(parents=True, exist_ok=True)
    if args.keep_shipped and not args.from_weights:
        raise cli.UserError("--keep-shipped goes with --from-weights FOLDER")
    if args.keep_shipped and args.condition != "clean":
        raise cli.UserError(f"--keep-shipped keeps stages that learnt from clean clips; with --condition "
                            f"{args.condition} leave it out (the stages that learn from videos train again)")
    if args.from_weights:
        keep = SHIPPED_STAGES if args.keep_shipped else KEPT_FROM_WEIGHTS
        if args.condition != "clean":  # what learnt from videos learns again, from the condition's clips
            keep = tuple(stage for stage in keep if stage not in VIDEO_TRAINED)
        start_from_weights(out, Path(args.from_weights), keep)
    torch.manual_seed(args.seed)
    times = run_stages(out, stages(out, budget, args.seed, args.device, args.condition))
    times_file = out / "times.json"
    if not args.skip_eval:
        start = time.perf_counter()
        results = evaluate(out, budget, args.device)
        times["evaluate"] = round(time.perf_counter() - start, 1)
        results["times_s"] = times
        write_json(out / "results.json", results)
        write_text(out / "results.txt", markdown(results))
        write_json(times_file, times)
    print("time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) +
          f"; total {sum(times.values()) / 60:.1f} min")
    if args.ship:
        ship(out, Path(args.ship_to))
        print(f"shipped the weights to {args.ship_to}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
