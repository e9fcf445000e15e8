"""A training script's settings: one dataclass, a `--flag value` per field, each flag's check beside it.

    @dataclasses.dataclass
    class Settings(TrainSettings):
        lora_rank: int = flag(64, "rank of the spatial LoRA", AT_LEAST_1)

Every field is made by `flag(default, help, check, may_change=...)`: what it means, what values it
accepts, and whether a resumed run may change it (how long and how fast it trains, what it logs, where
its files are) or must keep it (anything that changes the model's shapes, the data or the objective).
`check_settings` runs every field's check before anything heavy runs and reports all problems in one
`UserError`; `runtime/folder.py` reads `may_change` when a run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from lcm.schedule import SCHEDULES
from runtime.cli import UserError, boolean, device_problem

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclasses.dataclass(frozen=True)
class Check:
    """What values a flag accepts: `ok(value)`, described for the error message as `what`."""
    ok: Callable[[Any], bool]
    what: str

    def problem(self, name: str, value) -> str | None:
        return None if self.ok(value) else f"--{name} must be {self.what} (got {value!r})"


class PathCheck(Check):
    """An input file or folder: it must exist; `required`: it must be given."""

    def __init__(self, required: bool):
        super().__init__(lambda v: True, "an existing file or folder")
        object.__setattr__(self, "required", required)

    def problem(self, name: str, value) -> str | None:
        if not value:
            return f"--{name} is required" if self.required else None
        return None if Path(value).exists() else f"--{name} {value}: no such file or folder"


AT_LEAST_1 = Check(lambda v: v >= 1, "at least 1")
NOT_NEGATIVE = Check(lambda v: v >= 0, "0 or more")
POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "a positive number")
WEIGHT = Check(lambda v: math.isfinite(v) and v >= 0, "a number, 0 or more")
FINITE = Check(math.isfinite, "a finite number")
DECAY = Check(lambda v: 0 <= v < 1, "in [0, 1)")
SHARE = Check(lambda v: 0 <= v <= 1, "in [0, 1]")
FACTOR = Check(lambda v: math.isfinite(v) and 0 < v <= 1, "in (0, 1]")
PIXELS = Check(lambda v: v >= 8 and v % 8 == 0, "a positive multiple of 8")
GRID = Check(lambda v: 1 <= v <= 1000, "between 1 and 1000")
REQUIRED_PATH, OPTIONAL_PATH = PathCheck(required=True), PathCheck(required=False)


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, " or ".join(choices))


SCHEDULE = one_of(*SCHEDULES)


def flag(default, help: str, check: Check | None = None, may_change: bool = False, compared: bool = True):
    """A settings field: default, help text, check, and how a resumed run treats it (`may_change`: it may
    differ from the checkpoint's value, and is printed; `compared=False`: not compared at all)."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "may_change": may_change,
                                                        "compared": compared})


@dataclasses.dataclass
class TrainSettings:
    """What every training run shares (data, length, safety, logging); each script's dataclass adds its
    own fields, the method's settings among them (noise schedule, EMA rate, warm-up, weight decay, with
    help about the method), and may change a default here by declaring the field again."""
    sd15: str = flag("", "SD1.5 or personalized SD1.5 checkpoint (single file or diffusers folder)", REQUIRED_PATH,
                     may_change=True)
    data: str = flag("", "folder of captioned images or videos (media/data.py)", REQUIRED_PATH, may_change=True)
    out: str = flag("runs/train", "the run's folder: checkpoint.pt, log.jsonl, exported weights, val/",
                    compared=False)
    resume: bool = flag(False, "continue the run in --out from its checkpoint.pt", compared=False)
    overwrite: bool = flag(False, "delete the run in --out and start again", compared=False)
    size: int = flag(512, "training resolution (pixels, square)", PIXELS)
    batch: int = flag(1, "samples per process and micro-batch", AT_LEAST_1, may_change=True)
    grad_accum: int = flag(1, "micro-batches per optimizer step", AT_LEAST_1, may_change=True)
    steps: int = flag(1000, "optimizer steps in all", AT_LEAST_1, may_change=True)
    lr: float = flag(1e-4, "learning rate (AdamW)", POSITIVE, may_change=True)
    lr_anneal_at: int = flag(0, "from this step on the learning rate is --lr x --lr-anneal-factor (0: never)",
                             NOT_NEGATIVE, may_change=True)
    lr_anneal_factor: float = flag(0.2, "see --lr-anneal-at", FACTOR, may_change=True)
    grad_clip: float = flag(1.0, "gradient-norm clipping", POSITIVE, may_change=True)
    precision: str = flag("bf16", "autocast on GPU: bf16, fp16 or fp32; the CPU runs fp32", one_of(*PRECISIONS),
                          may_change=True)
    gradient_checkpointing: bool = flag(True, "recompute activations in backward (less memory)", may_change=True)
    save_every: int = flag(250, "steps between checkpoints (and at the end)", AT_LEAST_1, may_change=True)
    log_every: int = flag(10, "steps between log.jsonl records", AT_LEAST_1, may_change=True)
    val_every: int = flag(250, "steps between validation samples in val/ (0: never)", NOT_NEGATIVE,
                          may_change=True)
    seed: int = flag(0, "the run's randomness: data order, noise, timesteps, guidance weights")
    device: str = flag("auto", "cpu, cuda, cuda:N or auto", may_change=True)
    workers: int = flag(2, "data-loading processes", NOT_NEGATIVE, may_change=True)


def parse_settings(cls, argv=None, description: str = ""):
    """The dataclass `cls` from `--name value` flags (one per field; unknown flags are errors)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        kind, name = type(f.default), "--" + f.name.replace("_", "-")
        help = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(name, type=boolean, default=f.default, metavar="BOOL", help=help)
        else:
            parser.add_argument(name, type=kind, default=f.default, help=help)
    return cls(**vars(parser.parse_args(argv)))


def check_settings(s) -> None:
    """Every field's check, and the checks across fields; all problems in one UserError."""
    problems = []
    for f in dataclasses.fields(s):
        check = f.metadata.get("check")
        if check is not None and (problem := check.problem(f.name.replace("_", "-"), getattr(s, f.name))):
            problems.append(problem)
    if getattr(s, "w_min", 0) > getattr(s, "w_max", math.inf):
        problems.append(f"--w-min {s.w_min} is above --w-max {s.w_max}")
    if device_problem(s.device, allow_auto=True):
        problems.append(device_problem(s.device, allow_auto=True))
    if s.resume and s.overwrite:
        problems.append("--resume true continues the run in --out, --overwrite true deletes it: pass one of them")
    if problems:
        raise UserError("; ".join(problems))


def may_change(s) -> set[str]:
    """The fields a resumed run may change."""
    return {f.name for f in dataclasses.fields(s) if f.metadata.get("may_change")}


def compared(s) -> set[str]:
    """The fields a resumed run compares with its checkpoint's."""
    return {f.name for f in dataclasses.fields(s) if f.metadata.get("compared", True)}
