"""Reading checkpoint files safely, and loading state dicts strictly with clear errors.

Every loader in the project goes through these functions:

* `read_state_dict(path)` reads a `.safetensors` file, or a `.ckpt`/`.pt`/`.pth`/`.bin` pickle with
  `torch.load(weights_only=True)` (a pickle that would run code is refused), unwraps a
  `{"state_dict": ...}` container and returns a flat `{name: tensor}` dict.
* `load_strict(model, state_dict)` fills every parameter and persistent buffer of `model` from
  `state_dict`, and fails with a message naming what is missing, unexpected or mis-shaped.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from runtime.cli import UserError
from runtime.files import atomic_write

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, of the wrong kind, or does not fit the model."""


class StateDict(dict):
    """A {name: tensor} dict that remembers the file it was read from, for messages."""
    source = "the given state dict"


def source_name(source) -> str:
    """How messages name a weights source: its path, or the file a StateDict was read from."""
    return getattr(source, "source", "the given state dict") if isinstance(source, dict) else str(source)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} dict from a safetensors or (safe) pickle checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file. Pass the path of a weights file you have downloaded.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a single weights file here.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state = _read_pickle(path)
    else:
        raise CheckpointError(
            f"{path}: unknown file type {suffix!r}; expected .safetensors, .ckpt, .pt, .pth or .bin.")
    return _unwrap(state, path)


# Weight files inside a diffusers model folder, most preferred first (full precision before variants).
DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                          "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                          "diffusion_pytorch_model.bin", "pytorch_model.bin")


def read_component(source, component: str) -> tuple[dict[str, torch.Tensor], str, Path | None]:
    """(tensors, name for messages, folder or None) of one model from any SD1.5 source.

    `source` is a state dict, a weights file, a diffusers pipeline folder (the `component`
    subfolder is used: "unet", "vae", "text_encoder") or that model folder itself.
    """
    if isinstance(source, dict):
        return source, source_name(source), None
    path = Path(source)
    if not path.is_dir():
        return read_state_dict(path), str(path), None
    folder = path / component if (path / component).is_dir() else path
    for name in DIFFUSERS_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name), str(folder / name), folder
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(f"{folder}: no weights file here (found: {found}); pass a diffusers pipeline "
                          f"folder, its {component}/ folder, or a single weights file.")


HINTS_KEY = "architecture"


def architecture_hints(source, component: str) -> dict:
    """What shapes cannot tell (head counts, GroupNorm groups) for `component`, as our own save
    functions store it in the safetensors metadata ({} for other files and for state dicts)."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_file():
        return {}
    raw = read_metadata(source).get(HINTS_KEY)
    return json.loads(raw).get(component, {}) if raw else {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header ({} for other files or none stored)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}). "
                              "The file may be truncated: download it again.") from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several exception types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). "
            "The file may be truncated or corrupt: download it again.") from e


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch.save's zip nor a pickle
        first = head[:40].decode("utf-8", "replace").strip().splitlines()
        shown = f"it begins {first[0]!r}" if first else "it is empty"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({shown}); perhaps an error page or a partial "
                              "download saved in its place: download the file again.")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load. This pickle contains objects other than tensors and plain "
            f"containers, and loading it could run arbitrary code ({_unpickling_reason(e)}). "
            "Convert it to .safetensors with a tool you trust, or use a .safetensors release.") from e
    except Exception as e:  # noqa: BLE001 - zip/EOF errors from truncated files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}). "
            "The file may be truncated or corrupt: download it again.") from e


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "nsupported" in line), lines[0] if lines else type(e).__name__)


def _unwrap(state, path: Path) -> dict[str, torch.Tensor]:
    """Accept {"state_dict": {...}} containers (Lightning .ckpt files, some re-saves)."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}.")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the file holds no tensors.")
    named = StateDict(tensors)
    named.source = str(path)
    return named


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str,
                allow_missing: tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`; every model tensor must be filled, every key must be used.

    `allow_missing` lists key prefixes that may stay unfilled (e.g. motion modules that come from a
    second file). Shapes must match exactly; dtypes are cast to the model's.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        raise CheckpointError(f"{what} does not fit the model: " + _problem_report(missing, unexpected, mis_shaped))
    model.load_state_dict(state, strict=False)


def _problem_report(missing, unexpected, mis_shaped, show: int = 8) -> str:
    lines = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            lines.append(f"{len(items)} {title}: " + ", ".join(items[:show]) + more)
    return "; ".join(lines)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict | None = None) -> None:
    """Write tensors atomically (a temp file of this process, then rename: runtime/files.py); non-finite
    values are refused; `metadata` values are JSON-encoded if not str."""
    from safetensors.torch import save_file
    path = Path(path)
    check_finite(state, path)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)


class NonFiniteError(UserError):
    """Weights about to be written hold NaN or inf."""


def non_finite(value, name: str = "") -> list[str]:
    """Names of the floating tensors in `value` (a tensor, or dicts and lists of them, such as an
    optimizer state) that hold NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [name] if value.is_floating_point() and not torch.isfinite(value).all() else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [bad for k, v in items for bad in non_finite(v, f"{name}.{k}" if name else str(k))]


def check_finite(state: dict, where) -> None:
    """Refuse to write NaN or inf: NonFiniteError names the first bad tensor."""
    bad = non_finite(state)
    if bad:
        raise NonFiniteError(f"{where}: not written: {len(bad)} tensor(s) hold NaN or inf "
                             f"({bad[0]}{', ...' if len(bad) > 1 else ''})")


def describe_checkpoint(keys) -> str:
    """A short guess of what a file is, from its key names, for error messages."""
    keys = list(keys)
    has = lambda s: any(s in k for k in keys)  # noqa: E731
    starts = lambda s: any(k.startswith(s) for k in keys)  # noqa: E731
    if starts("conditioner.embedders.") or has("label_emb.0.0.weight") or has("add_embedding.linear_1"):
        return "an SDXL checkpoint (this project supports SD1.5-family models only)"
    if starts("cond_stage_model.model."):
        return "an SD2.x checkpoint (OpenCLIP text encoder; this project supports SD1.5-family models only)"
    if starts("lora_unet_") or starts("lora_te_") or has(".lora_A.") or has(".lora_down."):
        return "a LoRA file (pass it with --lora)"
    if starts("control_model.") or has("zero_convs.0.0.weight") or has("controlnet_cond_embedding."):
        return "a ControlNet"
    if has("motion_modules."):
        return "a motion module (pass it with --motion)"
    if starts("model.diffusion_model."):
        return "an SD1.5-style single-file checkpoint"
    if starts("encoder.down.") or starts("encoder.down_blocks.") or starts("decoder.up_blocks."):
        return "a VAE"
    if starts("text_model.") or starts("transformer.resblocks."):
        return "a CLIP text encoder"
    if starts("down_blocks.") or starts("input_blocks."):
        return "a UNet without its file prefix"
    return f"an unknown kind of file (first keys: {', '.join(sorted(keys)[:3])})"

