"""How every command line reports problems: one error type for what the user can fix, one wrapper.

Scripts raise `UserError` for a bad file, flag, data folder or output location (the message names it,
says what is wrong and what to do), its kind `WriteError` for a file that could not be written
(runtime/files.py raises it: a full disk, a file-size limit, no permission), and `Interrupted` when a
signal stopped a run after it saved. Called from Python, a training script's `main(argv)` raises them
(sample.py's `main` runs through `run` and returns the code); `run(main)` at a script's `__main__` turns
them into one line on stderr and an exit code:

    2    a user error (also argparse's code for a bad flag), and a file that could not be written
    1    any other I/O error (a folder that cannot be made, a file removed underneath), with its path
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


# errno -> the cause in words, for messages
CAUSES = {errno.ENOSPC: "no space left on the device",
          errno.EFBIG: "file too large (a file-size limit, or a full disk)", errno.EDQUOT: "disk quota exceeded",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def in_words(e: OSError) -> str:
    """What went wrong, in words: "no space left on the device", "permission denied", ..."""
    return CAUSES.get(e.errno) or (e.strerror or str(e)).lower()


class WriteError(UserError):
    """A file that could not be written, with nothing partial left: one line naming it, the cause in words
    and what to do. `then` is what continues the work; `elsewhere` whether another --out may be chosen;
    `kept` what the earlier files hold ("checkpoint.pt holds step 4")."""

    def __init__(self, path, error: OSError, then: str = "run the same command again", elsewhere: bool = True,
                 kept: str = ""):
        self.path, self.error, self.kept = path, error, kept
        super().__init__(f"could not write {path}: {in_words(error)}; nothing partial was left"
                         f"{', and ' + kept if kept else ''}: {self.remedy(then, elsewhere)}")

    def remedy(self, then: str, elsewhere: bool) -> str:
        if self.error.errno in NO_ROOM:
            return f"free some space{' (or choose another --out)' if elsewhere else ''}, then {then}"
        if self.error.errno in NOT_WRITABLE:
            where = "choose another --out you can write to" if elsewhere else "make its folder writable"
            return f"{where}, then {then}"
        return f"check the location{' (or choose another --out)' if elsewhere else ''}, then {then}"

    def retold(self, then: str, elsewhere: bool = False, kept: str | None = None) -> WriteError:
        """The same failure with what continues the work where it happened (a training run: --resume true)."""
        return WriteError(self.path, self.error, then, elsewhere, self.kept if kept is None else kept)


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
    what = in_words(e)
    if e.errno in NO_ROOM:
        return f"{where}{what}: free some space, then run the same command again (a training run: with --resume true)"
    if e.errno in NOT_WRITABLE:
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
