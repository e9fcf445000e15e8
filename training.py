"""What the three training scripts share: settings from the command line, device and DDP setup,
mixed precision, resumable atomic checkpoints, stop signals, and a JSONL log.

Nothing here knows about consistency models: each script defines its loss on one micro-batch (the
paper's algorithm), what happens after an optimizer step (the EMA target), and what a checkpoint
holds, and hands them to `train_loop`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm


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


def require_one_of(flag: str, value: str, choices) -> None:
    """A clear error for a setting outside its choices, before any model is loaded."""
    if value not in choices:
        raise SystemExit(f"{flag} must be {' or '.join(choices)}, not {value!r}")


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


def sample_generators(seed: int, batch_number: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, global batch number, index in the global batch).

    Every random draw of a sample (VAE posterior, timestep, noise, guidance weight) comes from its
    generator, so a run draws the same numbers on 1 or N processes and after a resume.
    (Python's hash of a tuple of ints is the same in every process.)
    """
    return [torch.Generator().manual_seed(hash((seed, batch_number, first + i)) % 2 ** 62) for i in range(count)]


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Scaled VAE latents of images [B, 3, H, W] or videos [B, 3, F, H, W]; each sample's posterior
    noise comes from its own generator."""
    latents = []
    for sample, generator in zip(pixels, generators):
        if sample.dim() == 4:  # a video [3, F, H, W]
            latents.append(vae.encode_video(sample[None], generator=generator))
        else:
            latents.append(vae.encode(sample[None]).sample(generator) * vae.cfg.scaling_factor)
    return torch.cat(latents)


def uniform(generators: list[torch.Generator], low: float, high: float) -> torch.Tensor:
    """One U[low, high] draw per sample (the guidance weight w), from the samples' generators."""
    return torch.cat([low + (high - low) * torch.rand(1, generator=g) for g in generators])


def drop_captions(captions: list[str], generators: list[torch.Generator], p: float) -> list[str]:
    """Replace each caption by "" with probability p: teaches the unconditional model that CFG needs."""
    keep = uniform(generators, 0.0, 1.0) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def global_mean(value: torch.Tensor, rt: Runtime) -> float:
    """The mean of a scalar over all processes (the same number on every rank)."""
    value = value.detach().float().reshape(1).to(rt.device)
    if rt.distributed:
        dist.all_reduce(value)  # a sum (gloo has no AVG)
    return value.item() / rt.world


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grad_clip: float,
                   rt: Runtime) -> float:
    """Average gradients over processes, clip, step, clear; returns the gradient norm before clipping.

    Under torchrun this is DistributedDataParallel's all-reduce, done explicitly once per optimizer
    step (after gradient accumulation): the trainable LoRA and adapters are called through hooks and
    side networks, not through one module that a DDP wrapper could own.
    """
    if rt.distributed:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= rt.world
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item()


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

    def agreed(self, rt: Runtime) -> bool:
        """True on every process once any process got a signal (no rank is left waiting)."""
        if not rt.distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


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


def train_loop(s, rt: Runtime, batches, step: int, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
               loss_fn: Callable, after_step: Callable, checkpoint: Callable, validate: Callable | None = None,
               desc: str = "train") -> int:
    """The loop all three stages share; returns the step it stopped at.

    Per optimizer step: learning-rate warm-up; `grad_accum` micro-batches, each drawn from `batches`
    with one generator per sample (`sample_generators`, keyed by the global batch number, so the run
    is the same on 1 or N processes and after `--resume`), `loss_fn(batch, generators) -> (per-sample
    loss [B], t [B])` and backward; a finite check (a non-finite loss stops the run before the step,
    so the last checkpoint stays good); averaged gradients, clipping, the step; `after_step()` (EMA);
    a JSONL record with the loss per timestep bucket; `checkpoint(step)` every `save_every` steps, at
    the end, and on SIGINT/SIGTERM; `validate(step)` on rank 0 every `val_every` steps.
    `s` needs: steps, grad_accum, batch, seed, lr, warmup_steps, grad_clip, log_every, save_every,
    val_every, out.
    """
    out = Path(s.out)
    log, stop = JsonlLog(out / "log.jsonl", rt.main), StopSignal()
    bar = tqdm(total=s.steps, initial=step, disable=not rt.main, desc=desc)
    saved = step
    while step < s.steps:
        set_lr(optimizer, s.lr * warmup(step, s.warmup_steps))
        losses, timesteps = [], []
        try:
            for micro in range(s.grad_accum):
                number = step * s.grad_accum + micro  # the global batch number: data and randomness
                per_sample, t = loss_fn(next(batches), sample_generators(s.seed, number, rt.rank * s.batch, s.batch))
                (per_sample.mean() / s.grad_accum).backward()
                losses.append(per_sample.detach())
                timesteps.append(t.detach())
        except Exception:
            if not stop.requested:  # a signal can kill DataLoader workers mid-step: keep the last step
                raise
            optimizer.zero_grad(set_to_none=True)
            break
        per_sample, t = torch.cat(losses), torch.cat(timesteps)
        loss = global_mean(per_sample.mean(), rt)
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {step}: stopped before the optimizer step; the last good "
                             f"checkpoint is {out / 'checkpoint.pt'}. Lower --lr, or use --precision bf16 or fp32.")
        grad_norm = optimizer_step(optimizer, params, s.grad_clip, rt)
        after_step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % s.log_every == 0 or step == s.steps:
            memory = {"peak_memory_gb": round(torch.cuda.max_memory_allocated(rt.device) / 2 ** 30, 3)} \
                if rt.device.type == "cuda" else {}
            log.write(step=step, loss=loss, grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"],
                      **timestep_buckets(t.cpu(), per_sample.cpu()), **memory)
        stopping = stop.agreed(rt)
        if step % s.save_every == 0 or step == s.steps or stopping:
            checkpoint(step)
            saved = step
        if validate is not None and rt.main and s.val_every > 0 and (step % s.val_every == 0 or step == s.steps):
            validate(step)
        if stopping:
            break
    bar.close()
    if step < s.steps:  # stopped by a signal
        if saved != step:
            checkpoint(step)
        if rt.main:
            print(f"stopped by a signal at step {step}; the checkpoint is saved: continue with --resume true")
    if rt.distributed:
        dist.barrier()
    return step


def teardown(rt: Runtime) -> None:
    if rt.distributed:
        dist.destroy_process_group()
