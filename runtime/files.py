"""Writing files whole or not at all, and a write that fails as one clear line.

Every file the project writes goes through here: weights and checkpoints (runtime/weights.py,
runtime/folder.py), videos, frames and images (media/video.py), JSON, text, caches and results
(`write_output`, `write_text`, `write_json`), and the training log (`append_text`).

    with atomic_write(path) as tmp:       # a temporary name beside `path`, unique to this process
        write_something(tmp)              # renamed to `path` when the block completes

A crash, a kill or a full disk never leaves a half-written file: the temporary file is removed, and the
previous version of `path` stays as it was. A write that fails for lack of room or permission is a
`cli.WriteError` naming the file and the cause in words (one line from the command line, exit code 2),
whichever library did the writing: torch's zip writer and safetensors report it in their own ways.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from runtime.cli import UserError, WriteError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path beside `path` (its folder made if needed); rename it to `path` when the block
    completes, remove it (a file or a folder) when it fails. A failed write is a WriteError."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove(tmp)  # left by a killed process that had this id
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        error = None if isinstance(e, UserError) else os_error_behind(e)
        if error is None:  # not a write that failed: a bug, or a problem already told
            raise
        raise WriteError(path, error) from e
    finally:
        remove(tmp)


def os_error_behind(e: BaseException) -> OSError | None:
    """The operating system's error behind a failed write, or None: `e` itself, the one it was raised from
    or while handling (torch.save's RuntimeError over a Python file), or the one a safetensors error
    quotes ("... (os error 28)")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        quoted = re.search(r"\(os error (\d+)\)", str(e))
        if quoted:
            number = int(quoted.group(1))
            return OSError(number, os.strerror(number))
        e = e.__cause__ or e.__context__
    return None


def remove(path: Path) -> None:
    """Remove a temporary file or folder if it is there (quietly: it is already a failure's clean-up)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_output(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the file (or folder) under a temporary name, which then takes `path`'s place:
    whole or not at all (`atomic_write`). Returns `path`."""
    with atomic_write(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_output(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, value) -> Path:
    """`value` as indented JSON with a final newline, written whole or not at all."""
    return write_text(path, json.dumps(value, indent=1) + "\n")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Add `text` at the end of `path` (a log); a write that fails is cut off again, so the file ends as it
    was, and is a WriteError."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise WriteError(path, e) from e
