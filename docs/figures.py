"""Every figure of docs/consistency-distillation.md and docs/toy-world.md, drawn from the shipped toy model.

    python -m docs.figures                          # all figures into docs/figures/
    python -m docs.figures --only sampler_steps     # one figure (names: --help)
    python -m docs.figures --quick --out /tmp/figs  # few samples and steps (tests/test_docs.py runs this)
    python -m docs.figures --weights runs/toy_ship  # another toy run's shipped folder (toy/run.py --ship-to)

Everything comes from the weight files in --weights and their metadata (noise schedule, solver grid,
guidance range, loss, EMA rate and step count of each stage), toy.json (the teacher's guidance) and the
studies' results files beside them (seeds.json, personalized.json, conditions.json, drift.json): after
the toy world is retrained, run this again. No result is written in here.
Plots need matplotlib (requirements-dev.txt); nothing outside docs/ imports it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from docs import figures_method as method
from docs import figures_results as results
from docs import figures_stages as stages
from docs.plotting import Context

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"schedule": method.fig_schedule, "forward_process": method.fig_forward_process,
           "boundary": method.fig_boundary, "solver_grid": method.fig_solver_grid,
           "teacher_step": method.fig_teacher_step, "loss_weighting": method.fig_loss_weighting,
           "sampler_steps": stages.fig_sampler_steps, "videos": stages.fig_videos, "ema_drift": stages.fig_ema_drift,
           "init_target": stages.fig_init_target, "teacher_free": stages.fig_teacher_free,
           "toy_results": results.fig_toy_results, "trajectory": method.fig_trajectory,
           "personalization": results.fig_personalization, "strip": results.fig_strip,
           "conditions_samples": results.fig_conditions_samples, "learning_curves": results.fig_learning_curves,
           "drift": results.fig_drift}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--weights", default=str(ROOT / "toy" / "weights"), help="a folder of shipped toy weights")
    p.add_argument("--quick", action="store_true", help="few samples and steps (a smoke test)")
    p.add_argument("--only", nargs="+", choices=list(FIGURES), default=list(FIGURES), metavar="NAME",
                   help=f"some figures: {', '.join(FIGURES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    ctx = Context(Path(args.weights), out, args.quick, args.seed)
    for name in args.only:
        FIGURES[name](ctx)
        print(f"{name}: done")
    print(f"figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
