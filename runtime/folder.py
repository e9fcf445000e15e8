"""The --out folder of one training run: refused when it already holds a run (unless --resume true
continues it or --overwrite true starts it over), locked while the run lasts, and on resume checked
against the checkpoint's settings; checkpoints written whole or not at all, and read without running code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from runtime.cli import UserError, WriteError
from runtime.distributed import Runtime
from runtime.settings import compared, may_change
from runtime.files import atomic_write, write_text
from runtime.weights import check_finite

try:
    import fcntl  # the lock (POSIX); without it, runs are not locked
except ImportError:
    fcntl = None

_LOCKS: dict[Path, object] = {}  # --out folder -> this process's open lock file


def claim_folder(s, rt: Runtime, products: tuple[str, ...]) -> dict | None:
    """Claim --out for this run; returns the checkpoint to continue from (None: start at step 0).

    A folder that already holds a run (checkpoint.pt, log.jsonl, the script's exported `products`)
    is refused unless --resume true continues it or --overwrite true deletes it first. Rank 0 locks
    the folder while the run lasts (a second run on it is refused; a crashed run's lock goes with
    its process). On resume, the checkpoint's settings are compared with these, and log.jsonl keeps
    only the records up to the checkpoint's step.
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
    """Refuse a resume whose settings differ from the checkpoint's, except in fields that may change
    (`flag(..., may_change=True)`), which are printed."""
    current, saved = dataclasses.asdict(s), state["settings"]
    changed = [k for k, v in current.items() if k in saved and k in compared(s) and saved[k] != v]
    refused = [k for k in changed if k not in may_change(s)]
    allowed = [k for k in changed if k in may_change(s)]

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
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as e:  # a full disk
        f.close()
        raise WriteError(out / "run.lock", e) from e
    _LOCKS[key] = f


def release_folders() -> None:
    for f in _LOCKS.values():
        f.close()  # closing the file releases its lock
    _LOCKS.clear()


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
    write_text(path, "".join(line + "\n" for line in kept))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file of this process, then rename: a crash or a full disk never leaves a
    half-written checkpoint (a full disk is a WriteError). NaN or inf anywhere in `state` is refused
    (NonFiniteError), never written."""
    check_finite(state, path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file, so that a failed write keeps its errno (not a bare zip error)


def load_checkpoint(path: Path) -> dict:
    """A state written by `save_checkpoint` (weights_only: a pickle that would run code is refused)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load: it holds objects other than tensors, and loading it could "
                        "run code. These scripts did not write it; start over with --overwrite true") from e
    except Exception as e:  # noqa: BLE001 - zip and EOF errors of a truncated file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); it may be cut short. "
                        "Start over with --overwrite true, or put back a copy you kept") from e
    if not isinstance(state, dict) or not {"step", "settings"} <= state.keys():
        raise UserError(f"{path}: not a checkpoint of these scripts (no step and settings); "
                        "start over with --overwrite true")
    return state


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
