"""The --out folder of one training run: refused when it already holds a run (unless --resume true
continues it or --overwrite true starts it over), locked while the run lasts, and on resume checked
against the checkpoint's settings.

    state = start_run(s, rt, PRODUCTS)   # None or the checkpoint to continue; after the flag and data checks
                                         # (a refused command deletes nothing) and before any model loads
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from cli import UserError
from training import Runtime, load_checkpoint
from weights import atomic_write

try:
    import fcntl  # the lock (POSIX); without it, runs are not locked
except ImportError:
    fcntl = None

# Settings a resumed run may change (they are printed): how long and how fast it trains, what it logs,
# where its files are. Any other difference is refused: it would change the model's shapes, the
# data or the objective, and the checkpoint would no longer continue the same run.
MAY_CHANGE = ("steps", "lr", "warmup_steps", "lr_anneal_at", "lr_anneal_factor", "grad_clip", "batch", "grad_accum",
              "save_every", "log_every", "val_every", "val_prompt", "val_score", "workers", "device", "precision",
              "gradient_checkpointing", "sd15", "teacher_motion", "lora", "motion", "controlnet", "data",
              "control_data")
NOT_COMPARED = ("resume", "overwrite", "out")
_LOCKS: dict[Path, object] = {}  # --out folder -> this process's open lock file


def start_run(s, rt: Runtime, products: tuple[str, ...]) -> dict | None:
    """Claim --out for this run; returns the checkpoint to continue from (None: start at step 0).

    A folder that already holds a run (checkpoint.pt, log.jsonl, the script's exported `products`)
    is refused unless --resume true continues it or --overwrite true deletes it first. Rank 0 locks
    the folder while the run lasts (a second run on it is refused; a crashed run's lock goes with
    its process). On resume, the checkpoint's settings are compared with these (`MAY_CHANGE`), and
    log.jsonl keeps only the records up to the checkpoint's step.
    """
    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the run")
    if rt.main:
        lock_folder(out)
    found = [name for name in ("checkpoint.pt", "log.jsonl", *products, "val") if (out / name).exists()]
    if rt.main and s.overwrite and found:
        for name in found:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
        print(f"--overwrite true: removed the earlier run's {', '.join(found)} from {out}")
    if s.overwrite:
        return None
    checkpoint = out / "checkpoint.pt"
    if not s.resume:
        if found:
            raise UserError(f"--out {out} already holds a run ({', '.join(found)}): continue it with --resume true, "
                            "start it over with --overwrite true, or pass another --out")
        return None
    if not checkpoint.exists():
        if any(name in found for name in products):
            raise UserError(f"--resume true: {out} holds {', '.join(found)} but no checkpoint.pt to continue from; "
                            "start over with --overwrite true, or pass another --out")
        if rt.main:
            trim_log(out / "log.jsonl", 0)
            print(f"--resume true: no checkpoint in {out} yet, starting at step 0")
        return None
    state = load_checkpoint(checkpoint)
    check_resume_settings(state, s, checkpoint, rt.main)
    if rt.main:
        trim_log(out / "log.jsonl", state["step"])
    return state


def check_resume_settings(state: dict, s, checkpoint: Path, announce: bool) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, except those in MAY_CHANGE (printed)."""
    current = dataclasses.asdict(s)
    saved = state["settings"]
    changed = [k for k, v in current.items() if k in saved and k not in NOT_COMPARED and saved[k] != v]
    refused = [k for k in changed if k not in MAY_CHANGE]
    allowed = [k for k in changed if k in MAY_CHANGE]

    def show(keys):
        return ", ".join(f"--{k.replace('_', '-')} {current[k]} (checkpoint: {saved[k]})" for k in keys)

    if refused:
        may = f"; these may change: {show(allowed)}" if allowed else ""
        raise UserError(f"{checkpoint} (step {state['step']}) was trained with other settings: {show(refused)} "
                        f"would change the model's shapes, the data or the objective{may}. Resume with the "
                        "checkpoint's values, or start a new run with another --out (or --overwrite true)")
    if allowed and announce:
        print(f"resuming with changed settings: {show(allowed)}")


def lock_folder(out: Path) -> None:
    """Hold an exclusive lock on out/run.lock (with this process's id in it) until `release_folders`;
    the operating system drops it when the process ends, so a crashed run leaves no stuck lock."""
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if key in _LOCKS:  # an earlier run in this process on the same folder ended with an error
        _LOCKS.pop(key).close()
    if fcntl is None:
        return
    f = open(out / "run.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"--out {out} is in use by another run (process {holder}): wait for it to end, "
                        "or pass another --out") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[key] = f


def release_folders() -> None:
    for f in _LOCKS.values():
        f.close()  # closing the file releases its lock
    _LOCKS.clear()


def one_run(main: Callable) -> Callable:
    """Decorates a training script's main: the --out lock it takes is released however main ends
    (so `main(argv)` can be called again from Python after an error)."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        finally:
            release_folders()
    return wrapper


def trim_log(path: Path, step: int) -> None:
    """Keep the log's records up to `step`: a resumed run writes the later steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            pass
    with atomic_write(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


@contextlib.contextmanager
def restoring(path: Path):
    """Around loading a checkpoint's tensors: one that does not fit the model is a UserError naming it."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise UserError(f"{path} does not fit the model these settings build ({detail}); were the weights files "
                        "replaced? Start a new run with another --out, or --overwrite true") from e
