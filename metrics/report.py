"""The results of evaluate.py: OUT/results.json (every setting and sha256, all rows) and OUT/results.txt,
laid out like AnimateLCM's Table 1 (a row per method and sampler; FVD, then the prompt score, per step count)."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.files import write_json, write_text

SAMPLER_TITLES = {"lcm": "LCM", "ddim": "DDIM", "dpmpp_2m": "DPM-Solver++ 2M"}


def write_results(out: Path, measures: dict, real: dict, rows: list[dict]) -> dict:
    """Merge this run's rows into OUT/results.json (a method's sampler and steps again: replaced); write results.txt."""
    file = out / "results.json"
    old = json.loads(file.read_text())["rows"] if file.exists() else []
    new = {(r["method"], r["sampler"], r["steps"]) for r in rows}
    rows = [r for r in old if (r["method"], r["sampler"], r["steps"]) not in new] + rows
    real_info = {k: v for k, v in real.items() if k not in ("mu", "sigma")}
    results = {**measures, "real_statistics": real_info, "rows": rows}
    write_json(file, results)  # each whole or not at all (runtime/files.py)
    write_text(out / "results.txt", markdown(results))
    return results


def markdown_table(rows: list[dict], score: str) -> str:
    """| method | FVD 1 | FVD 2 | ... | score 1 | score 2 | ... |, one row per method and sampler."""
    steps = sorted({r["steps"] for r in rows})
    table: dict[str, dict] = {}
    for r in rows:
        cfg = f"CFG {r['guidance']:g}" if r["guidance"] > 1 else "no CFG"
        table.setdefault(f"{r['method']}: {SAMPLER_TITLES[r['sampler']]}, {cfg}", {})[r["steps"]] = r
    head = ["method"] + [f"FVD {n}" for n in steps] + [f"{score} {n}" for n in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in table.items():
        fvd = [f"{cells[n]['fvd']:.2f}" if n in cells else "" for n in steps]
        scores = [f"{cells[n][score]:.2f}" if n in cells else "" for n in steps]
        lines.append("| " + " | ".join([label] + fvd + scores) + " |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The table, the protocol in one paragraph, and the sha256 of every weight file used."""
    p, rows, real = results["protocol"], results["rows"], results["real_statistics"]
    score = p["prompt_score"]
    features = p["features"] + (f" (frames to 224x224 by {p['resize']})" if p["features"].startswith("i3d") else "")
    weights = {**results["sha256"], **{k: v for r in rows for k, v in r["model"]["sha256"].items()}}
    text = [f"**FVD (lower is better) / {score} (higher is better)**", "", markdown_table(rows, score), "",
            f"Protocol: {results['prompts_used']} prompts x {p['videos_per_prompt']} videos, "
            f"{p['frames']}x{p['height']}x{p['width']}, seeds from {p['seed']}; FVD: {features}, "
            f"{min((r['fvd_generated'] for r in rows), default=0)} generated vs {real['count']} real clips "
            f"({results['real_videos']}, real stride {p['real_stride']}); all settings in results.json.",
            "", "Weights (sha256):", ""]
    text += [f"- `{Path(k).name}`: {v}" for k, v in sorted(weights.items(), key=lambda kv: Path(kv[0]).name)]
    return "\n".join(text) + "\n"
