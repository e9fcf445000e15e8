"""How every command line reports problems: one error type for what the user can fix, one wrapper.

Scripts raise `UserError` for a bad file, flag, data folder or output location (the message names it,
says what is wrong and what to do) and `Interrupted` when a signal stopped a run after it saved.
Called from Python, a training script's `main(argv)` raises them (sample.py's `main` runs through
`run` and returns the code); `run(main)` at a script's `__main__` turns them into one line on stderr
and an exit code:

    2    a user error (also argparse's code for a bad flag; a training save that failed on a full disk)
    1    any other I/O error (a permission, a full disk, a file removed underneath), with its path
    130  SIGINT (Ctrl-C), 143 SIGTERM: what shells and schedulers expect of an interrupted command

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import sys

import torch


BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def boolean(text: str) -> bool:
    """true/false, 1/0 or yes/no, in any case; anything else is an argparse error (not a silent false)."""
    if text.lower() not in BOOLEANS:
        raise argparse.ArgumentTypeError(f"expected true or false (or 1/0, yes/no), not {text!r}")
    return BOOLEANS[text.lower()]


class UserError(ValueError):
    """A problem the user can fix: reported as one line, without a traceback."""


class Interrupted(Exception):
    """A run stopped by a signal after saving; `code` is the shell's 128 + the signal's number."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def run(main, argv=None) -> int:
    """Call `main(argv)` and return the exit code; known problems become one line on stderr."""
    try:
        result = main(argv)
    except UserError as e:
        return report(f"error: {e}", 2)
    except Interrupted as e:
        return report(str(e), e.code)
    except KeyboardInterrupt:
        return report("interrupted (Ctrl-C)", 130)
    except OSError as e:
        return report(f"error: {os_error(e)}", 1)
    return result if isinstance(result, int) else 0


def report(message: str, code: int) -> int:
    sys.stdout.flush()
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the message
    return code


def os_error(e: OSError) -> str:
    """An OSError as 'path: what happened; what to do'."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        return f"{where}{what}: free some space, then run the same command again (a training run: with --resume true)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{what}: choose a location you can write to"
    return f"{where}{what}"


def device_problem(value: str, allow_auto: bool = False) -> str | None:
    """Why `--device value` cannot be used on this machine, or None."""
    if allow_auto and value == "auto":
        return None
    choices = "cpu, cuda or cuda:N" + (", or auto" if allow_auto else "")
    try:
        device = torch.device(value)
    except RuntimeError:
        return f"--device {value!r} is not a device: use {choices}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {value}: no CUDA GPU is available on this machine; use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {value}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 and up"
    elif device.type != "cpu":
        return f"--device {value}: not supported here; use {choices}"
    return None
