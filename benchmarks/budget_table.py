"""The tables of docs/gpu-budget.md: what each stage needs on one GPU, counted by benchmarks/budget.py.

    python -m benchmarks.budget_table            # every row (3.5 minutes on a 2-core CPU): writes
                                                 # benchmarks/budget.json and the tables in docs/gpu-budget.md
    python -m benchmarks.budget_table --count false   # only the docs' tables, from budget.json
    python -m benchmarks.budget_table --check true    # the docs' tables are the ones budget.json gives

Each row is `python -m benchmarks.budget` with the flags in its last column. A card fits a row when the
row's peak (the larger of the step's and the building's) plus 1 GiB (the CUDA context, about 0.5 GiB, and
what the count leaves out) is at most the card's memory. A step's time is estimated as what the H100's
measured step of that stage took beyond its arithmetic (`fixed_seconds`) plus the row's arithmetic at
40% of the card's bf16 peak: estimates, until measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import budget
from runtime import cli
from runtime.files import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "budget.json"
DOC = ROOT / "docs" / "gpu-budget.md"

SETTINGS = {"fp32": "--precision fp32 --gradient-checkpointing false",
            "bf16": "--precision bf16 --gradient-checkpointing false",
            "bf16 + checkpointing": "--precision bf16 --gradient-checkpointing true"}
CONFIGS = [  # (what, the budget's flags, the H100 measurement its time is estimated from); every setting
    ("stage 1, 512², batch 4", "--stage image --size 512", "stage 1"),
    ("stage 2, 16 x 256²", "--stage video --frames 16 --size 256", "stage 2"),
    ("stage 2, 16 x 512²", "--stage video --frames 16 --size 512", "stage 2"),
    ("stage 3 (I2V encoder), 16 x 256²", "--stage adapter --frames 16 --size 256", "stage 3"),
    ("stage 3 (I2V encoder), 16 x 512²", "--stage adapter --frames 16 --size 512", "stage 3"),
]
DEFAULTS_ONLY = [  # the same, at the scripts' defaults only
    ("stage 2 --direct, 16 x 256²", "--stage video --direct true --frames 16 --size 256", "stage 2"),
    ("stage 3, LoRA on a given ControlNet, 16 x 256²", "--stage adapter --adapter controlnet --controlnet any.pth",
     None),
    ("stage 3, a new ControlNet, 16 x 256²", "--stage adapter --adapter controlnet", None),
    ("teacher --train unet, 512²", "--stage teacher --train unet", None),
    ("teacher --train lora, 512²", "--stage teacher --train lora --ema-decay 0", None),
    ("teacher --train motion, 16 x 512²", "--stage teacher --train motion", None),
    ("teacher --train controlnet, 16 x 512²", "--stage teacher --train controlnet --motion mm_sd_v15_v2.ckpt", None),
    ("stage 1, 256², batch 1", "--stage image --size 256 --batch 1", "stage 1"),
]
DEFAULT = "bf16 + checkpointing"
CARDS_GB = (12, 16, 24, 48, 80)
HEADROOM_GIB = 1.0
# dense bf16 tensor-core peaks with fp32 accumulation, TFLOP/s (docs/sources.md), and the share of it assumed
CARDS_TFLOPS = {"RTX 3090": 71.0, "RTX 4090": 165.2, "A100": 312.0, "H100 SXM": 989.4}
UTILISATION = 0.4
# docs/equivalence.md (benchmarks/bench_train.py on an H100 80GB, commit cf07665): the row measured, seconds per
# step, peak GiB (torch.cuda.max_memory_allocated)
H100 = {"stage 1": ("stage 1, 256², batch 1", 0.69, 5.3), "stage 2": ("stage 2, 16 x 256²", 0.95, 18.4),
        "stage 3": ("stage 3 (I2V encoder), 16 x 256²", 0.65, 8.7)}


def rows() -> list[tuple[str, str, str, str | None]]:
    """(what, setting, the budget's flags, the H100 measurement it is timed by) of every row."""
    found = [(what, setting, f"{flags} {SETTINGS[setting]}", timed)
             for what, flags, timed in CONFIGS for setting in SETTINGS]
    return found + [(what, DEFAULT, flags, timed) for what, flags, timed in DEFAULTS_ONLY]


def measure(flags: str) -> dict:
    stage, size, fake, s = budget.parse(flags.split())
    return budget.count(stage, s, size, fake)


def fits_from(result: dict) -> str:
    """The smallest card of CARDS_GB that holds the row's peak with the headroom ("none" if none does)."""
    need = max(result["peak"], result["setup_peak"]) / 2 ** 30 + HEADROOM_GIB
    return next((f"{gb} GB" for gb in CARDS_GB if need <= gb), "none")


def memory_table(results: list[dict]) -> str:
    gib = 2 ** 30
    lines = ["| what | setting | peak of a step (GiB) | of it: weights / gradients + AdamW / activations (GiB) | "
             "peak while building (GiB) | fits from | TFLOP per step | `python -m benchmarks.budget` |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        at = r["at_peak"]
        weights, training = (at["trained weights"] + at["other weights"]) / gib, (at["optimizer state"] + at["gradients"]) / gib
        lines.append(f"| {r['what']} | {r['setting']} | {r['peak'] / gib:.1f} | {weights:.1f} / {training:.1f} / "
                     f"{at['activations'] / gib:.1f} | {r['setup_peak'] / gib:.1f} | {fits_from(r)} | "
                     f"{r['flops'] / 1e12:.1f} | `{r['flags']}` |")
    return "\n".join(lines)


def measured(results: list[dict], timed: str) -> dict:
    return next(r for r in results if r["what"] == H100[timed][0] and r["setting"] == DEFAULT)


def fixed_seconds(results: list[dict], timed: str) -> float:
    """What the H100's measured step took beyond its arithmetic at UTILISATION of its peak."""
    return H100[timed][1] - measured(results, timed)["flops"] / (UTILISATION * CARDS_TFLOPS["H100 SXM"] * 1e12)


def time_table(results: list[dict]) -> str:
    lines = ["| what (bf16 + checkpointing) | TFLOP per step | fixed (s) | " + " | ".join(CARDS_TFLOPS) + " |",
             "|---|---|---|" + "---|" * len(CARDS_TFLOPS)]
    for r in results:
        if r["setting"] != DEFAULT or r["timed"] is None:
            continue
        fixed = fixed_seconds(results, r["timed"])
        seconds = [fixed + r["flops"] / (UTILISATION * tflops * 1e12) for tflops in CARDS_TFLOPS.values()]
        lines.append(f"| {r['what']} | {r['flops'] / 1e12:.1f} | {fixed:.2f} | "
                     + " | ".join(f"{t:.2f}" for t in seconds) + " |")
    return "\n".join(lines)


def h100_table(results: list[dict]) -> str:
    lines = ["| stage, as measured | measured peak (GiB) | counted peak (GiB) | counted / measured | the count peaks in |"
             " measured s per step | TFLOP per step | share of the H100's bf16 peak used |", "|---|---|---|---|---|---|---|---|"]
    for timed, (what, seconds, gib) in H100.items():
        r = measured(results, timed)
        used = r["flops"] / seconds / (CARDS_TFLOPS["H100 SXM"] * 1e12)
        lines.append(f"| {what} | {gib} | {r['peak'] / 2 ** 30:.2f} | {r['peak'] / 2 ** 30 / gib:.3f} | "
                     f"{r['peak_phase']} | {seconds} | {r['flops'] / 1e12:.2f} | {100 * used:.2f}% |")
    return "\n".join(lines)


TABLES = {"memory": memory_table, "time": time_table, "h100": h100_table}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- budget: {name} -->", f"<!-- end of budget: {name} -->"


def with_tables(doc: str, results: list[dict]) -> str:
    """The document with each generated table between its markers replaced by the one `results` give."""
    for name, table in TABLES.items():
        begin, end = markers(name)
        start, stop = doc.index(begin) + len(begin), doc.index(end)
        doc = doc[:start] + "\n" + table(results) + "\n" + doc[stop:]
    return doc


def check() -> None:
    doc = DOC.read_text()
    if with_tables(doc, json.loads(RESULTS.read_text())["rows"]) != doc:
        raise cli.UserError(f"the tables in {DOC.name} are not the ones {RESULTS.name} gives: "
                            "run python -m benchmarks.budget_table")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", type=cli.boolean, default=False, help="only compare the docs with budget.json")
    p.add_argument("--count", type=cli.boolean, default=True, help="false: only write the docs from budget.json")
    args = p.parse_args(argv)
    if args.check:
        return check()
    results = json.loads(RESULTS.read_text())["rows"] if not args.count else []
    for what, setting, flags, timed in rows() if args.count else []:
        result = measure(flags)
        results.append({"what": what, "setting": setting, "flags": flags, "timed": timed, **result})
        print(f"{what:<50} {setting:<22} {result['peak'] / 2 ** 30:6.2f} GiB", flush=True)
    if args.count:
        write_json(RESULTS, {"rows": results})
    write_text(DOC, with_tables(DOC.read_text(), results))


if __name__ == "__main__":
    sys.exit(cli.run(main))
