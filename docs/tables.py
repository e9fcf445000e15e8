"""The docs' results tables, generated from the results files shipped beside the toy weights (toy/weights/*.json).

    python -m docs.tables            # rewrite every generated table in README.md and docs/*.md
    python -m docs.tables --check    # list the tables that differ from their results file (exit 1 if any)

A generated table sits in a document between two markers, which markdown does not show:

    <!-- table: NAME -->
    | ... |
    <!-- end table -->

NAME is one of TABLES; each is a function of the results files only, so a number in a table is the file's.
tests/test_docs.py fails when a document's table differs from what this writes. The toy FVD depends on how
many videos it compares (it falls as the counts grow), so every FVD column says its counts.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "toy" / "weights"
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- end table -->)", re.S)

# the method names of the results files -> the names the docs give them
NAMES = {"teacher DDIM": "teacher, DDIM, leading spacing (AnimateDiff's default)",
         "teacher DDIM, trailing": "teacher, DDIM, trailing spacing (fair)",
         "teacher DPM-Solver++": "teacher, DPM-Solver++, default spacing",
         "teacher DPM-Solver++, trailing": "teacher, DPM-Solver++, trailing (fair)",
         "direct (VideoLCM-style)": "direct (one stage, w = 3.5)"}


def results(name: str) -> dict:
    return json.loads((WEIGHTS / name).read_text())


def pm(cell: dict, digits: int, teacher: bool = False) -> str:
    """A results cell as "mean ± std" over training seeds; a model trained once (the teacher) as "mean ± std*"
    over its sampling sets."""
    if teacher:
        return f"{cell['mean']:.{digits}f} ± {cell['sampling_std']:.{digits}f}*"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def steps_label(n: int) -> str:
    return f"{n} step{'s' * (n > 1)}"


def fvd_note(r: dict) -> list[str]:
    """The line under a toy-FVD table that says its counts: a results file's sampling sets of `eval_count`
    videos, each against the toy world's reference set of real clips."""
    from toy.stages import Budget
    return ["", f"Toy FVD of each sampling set of {r['eval_count']} generated videos against "
                f"{Budget.reference_count} real clips (mean over {r['eval_seeds']} sets); the FVD falls as the "
                "counts grow, so only numbers of equal counts compare (`python evaluate.py` compares more videos "
                "and prints its counts)."]


# ---- toy/weights/seeds.json: text-to-video over three training seeds (toy/seeds.py) -------------------------

T2V_ROWS = ("teacher DDIM", "teacher DDIM, trailing", "teacher DPM-Solver++, trailing", "image-only LCM",
            "AnimateLCM (decoupled)", "AnimateLCM, plain init", "direct (VideoLCM-style)")


def seeds_cells() -> tuple[dict, dict]:
    r = results("seeds.json")
    return r, {(row["method"], row["steps"]): row for row in r["table"]}


def is_teacher(method: str) -> bool:
    return method.startswith("teacher")


def t2v_fvd() -> list[str]:
    r, cell = seeds_cells()
    steps = (1, 2, 4, 8, 50)
    rows = [[NAMES.get(m, m), *(pm(cell[(m, n)]["fvd"], 1, is_teacher(m)) if (m, n) in cell else ""
                                for n in steps)] for m in T2V_ROWS]
    return table(["method", *(steps_label(n) for n in steps)], rows) + fvd_note(r)


def t2v_accuracy() -> list[str]:
    r, cell = seeds_cells()
    steps = (1, 2, 4, 8, 50)

    def acc(m, n):
        if (m, n) not in cell:
            return ""
        c = cell[(m, n)]
        return f"{pm(c['seen_accuracy'], 2, is_teacher(m))} ({c['held_out_accuracy']['mean']:.2f})"
    return table(["method", *(steps_label(n) for n in steps)], [[NAMES.get(m, m), *(acc(m, n) for n in steps)]
                                                                for m in T2V_ROWS])


def t2v_attributes() -> list[str]:
    r, cell = seeds_cells()
    rows = []
    for m, n, label in ((m, 4, NAMES.get(m, m)) for m in T2V_ROWS):
        rows.append((m, n, label))
        if m == "teacher DDIM":
            rows.append((m, 50, "teacher, DDIM, 50 steps (the reference)"))
    keys = ("colour", "shape", "direction", "detector_direction", "detector_shape")
    return table(["method, 4 steps", "colour", "shape", "direction", "direction (detector)", "shape (detector)"],
                 [[label, *(pm(cell[(m, n)][k], 2, is_teacher(m)) for k in keys)]
                  for m, n, label in rows])


def sampling_spread() -> list[str]:
    """The std of the toy FVD over the sampling sets of one model, per method and step count."""
    r, cell = seeds_cells()
    steps = (1, 2, 4, 8)
    return table(["method", *(steps_label(n) for n in steps)],
                 [[NAMES.get(m, m), *(f"{cell[(m, n)]['fvd']['sampling_std']:.1f}" for n in steps)]
                  for m in T2V_ROWS])


def stage3() -> list[str]:
    r = results("seeds.json")
    rows = [[str(s["steps"]), pm(s["image_to_video.first_frame_psnr_matched"], 1),
             pm(s["image_to_video.anchored_first_frame_psnr_matched"], 1), pm(s["image_to_video.motion_accuracy"], 2),
             pm(s["layout.mask_iou"], 2), pm(s["layout.accuracy"], 2), pm(s["layout_plugged_in.mask_iou"], 2)]
            for s in r["stage3_table"]]
    return table(["steps", "I2V first frame, dB (colour-matched)", "anchored, dB (colour-matched)",
                  "I2V motion accuracy", "layout mask IoU", "layout prompt accuracy", "ControlNet plugged in, IoU"],
                 rows) + ["", f"real clips' mask IoU: {r['stage3_table'][-1]['layout.real_mask_iou']['mean']:.2f}"]


def claims_rows(held: dict[str, list[bool]], seeds: list) -> list[list[str]]:
    return [[claim, f"{sum(v)} of {len(v)}", " / ".join("yes" if h else "no" for h in v)] for claim, v in held.items()]


def claims() -> list[str]:
    r = results("seeds.json")
    return table(["claim", "holds in", "seeds " + " / ".join(str(s) for s in r["seeds"])],
                 claims_rows(r["claims"], r["seeds"]))


def training_times() -> list[str]:
    """Seconds of each stage of each training seed (the run's own stages: seed 0)."""
    r = results("seeds.json")
    stages = list(dict.fromkeys(k for t in r["times_s"].values() for k in t))
    return table(["stage", *(f"seed {s}" for s in r["times_s"])],
                 [[stage, *(f"{t[stage]:.0f} s" if stage in t else "" for t in r["times_s"].values())]
                  for stage in stages])


def samplers() -> list[str]:
    """The walkthrough's section 6: AnimateLCM against the teacher's few-step samplers."""
    r, cell = seeds_cells()
    rows = [("AnimateLCM (decoupled)", "AnimateLCM (no guidance)", 1), ("teacher DDIM", NAMES["teacher DDIM"], 2),
            ("teacher DDIM, trailing", "teacher, DDIM, trailing spacing", 2),
            ("teacher DPM-Solver++, trailing", "teacher, DPM-Solver++, trailing spacing", 2)]
    return table(["sampler", "toy FVD, 1 step", "2 steps", "4 steps", "prompt accuracy, 1 / 2 / 4 steps",
                  "UNet calls a step"],
                 [[label, *(pm(cell[(m, n)]["fvd"], 1, is_teacher(m)) for n in (1, 2, 4)),
                   " / ".join(f"{cell[(m, n)]['seen_accuracy']['mean']:.2f}" for n in (1, 2, 4)), str(calls)]
                  for m, label, calls in rows]) + fvd_note(r)


def readme_results() -> list[str]:
    """The README's table: the teacher's few-step samplers, AnimateLCM and the one-stage baseline."""
    r, cell = seeds_cells()
    rows = ("teacher DDIM", "teacher DDIM, trailing", "teacher DPM-Solver++, trailing", "AnimateLCM (decoupled)",
            "direct (VideoLCM-style)")
    return table(["method", "toy FVD, 1 step", "2 steps", "4 steps", "prompt accuracy, 1 / 2 / 4 steps"],
                 [[NAMES.get(m, m), *(pm(cell[(m, n)]["fvd"], 1, is_teacher(m)) for n in (1, 2, 4)),
                   " / ".join(f"{cell[(m, n)]['seen_accuracy']['mean']:.2f}" for n in (1, 2, 4))] for m in rows]) + \
        fvd_note(r)


# ---- toy/weights/personalized.json: the personalization over three seeds (toy/personalize.py) ---------------

def personalization() -> list[str]:
    r = results("personalized.json")
    keys = ("outline", "colour", "shape", "direction", "all")
    rows = []
    for row in r["table"]:
        few = row["seeds"] < len(r["seeds"])  # measured on one seed: ± its spread over sampling sets, marked *

        def value(k, d=2):
            return pm(row[k], d, teacher=few)
        label = row["method"] + (f" ({row['seeds']} of the {len(r['seeds'])} seeds)" if few else "")
        rows.append([label, str(row["steps"]), *(value(k) for k in keys), value("fvd", 1)])
    return table(["method", "steps", "outline style", "colour", "shape", "direction", "all three",
                  "toy FVD (outline clips)"], rows)


def personalization_targets() -> list[str]:
    r = results("personalized.json")
    return table(["target", "holds in", "seeds " + " / ".join(str(s) for s in r["seeds"])],
                 claims_rows(r["claims"], r["seeds"]))


TABLES = {"readme-results": readme_results, "t2v-fvd": t2v_fvd, "t2v-accuracy": t2v_accuracy, "t2v-attributes": t2v_attributes,
          "sampling-spread": sampling_spread, "stage3": stage3, "claims": claims, "training-times": training_times,
          "samplers": samplers, "personalization": personalization,
          "personalization-targets": personalization_targets}


def render(name: str) -> str:
    if name not in TABLES:
        raise KeyError(f"no generated table {name!r}; the tables: {', '.join(TABLES)}")
    return "\n".join(TABLES[name]()) + "\n"


def regenerated(text: str) -> str:
    """`text` with every generated table written anew."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only list the documents whose tables differ")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = regenerated(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    for doc in stale:
        print(f"{'differs' if args.check else 'rewritten'}: {doc.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
