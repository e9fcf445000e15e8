"""What the three training scripts share: settings from the command line, device and DDP setup,
mixed precision, resumable atomic checkpoints, stop signals, and a JSONL log.

Nothing here knows about consistency models; the scripts tell that story top to bottom.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist


def parse_settings(cls, argv=None, description: str = ""):
    """A dataclass of settings from `--name value` flags (one per field; unknown flags are errors)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        kind = type(f.default) if f.default is not None else str
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=f.default,
                                metavar="BOOL")
        else:
            parser.add_argument(flag, type=kind, default=f.default)
    return cls(**vars(parser.parse_args(argv)))


@dataclasses.dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(seed: int, device: str = "auto") -> Runtime:
    """Pick the device; under torchrun (RANK/WORLD_SIZE set) join the process group (nccl or gloo)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    torch.manual_seed(seed)  # the same on every rank: identical initial weights
    return Runtime(torch.device(device), rank, world)


def autocast(rt: Runtime, precision: str):
    """bf16/fp16 autocast on GPU; full precision on CPU (tiny configs) or when asked for fp32."""
    if rt.device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def all_reduce_grads(params, rt: Runtime) -> None:
    """Average gradients over ranks (what DDP does, for modules we call through hooks and pieces)."""
    if not rt.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)


def sample_generators(seed: int, step: int, first: int, count: int) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, step, the sample's index in the global batch).

    Every random draw of a sample (latent sampling, noise, timestep, guidance weight) comes from its
    generator, so a run gives the same numbers on 1 or N processes, and after a resume.
    """
    return [torch.Generator().manual_seed(hash((seed, step, first + i)) % 2 ** 62) for i in range(count)]


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


class JsonlLog:
    """One JSON object per line, appended (rank 0 only), with wall time."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.start = path, enabled, time.time()
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time() - self.start, 3), **record}) + "\n")


def warmup(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up, then constant (the LCM recipes' schedule)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def timestep_buckets(t: torch.Tensor, losses: torch.Tensor, buckets: int = 4, total: int = 1000) -> dict:
    """Mean per-sample loss by timestep quarter, so a run that stops improving somewhere shows it."""
    out = {}
    for b in range(buckets):
        lo, hi = b * total // buckets, (b + 1) * total // buckets
        mask = (t >= lo) & (t < hi)
        if mask.any():
            out[f"loss_t{lo}-{hi - 1}"] = round(losses[mask].mean().item(), 6)
    return out
