"""What the three training scripts share: settings from the command line and their checks, device
and DDP setup, mixed precision, resumable atomic checkpoints, stop signals, and a JSONL log
(`run_folder.py` guards the --out folder: lock, resume, overwrite).

Nothing here knows about consistency models: each script defines its loss on one micro-batch (the
paper's algorithm), what happens after an optimizer step (the EMA target), and what a checkpoint
holds, and hands them to `train_loop`. Problems the user can fix are `cli.UserError`s, raised before
any model loads where they can be.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from cli import Interrupted, UserError, boolean, device_problem, os_error
from lcm.distill import LOSSES
from lcm.schedule import SCHEDULES
from weights import NonFiniteError, atomic_write, check_finite

PRECISIONS = ("bf16", "fp16", "fp32")


def parse_settings(cls, argv=None, description: str = ""):
    """A dataclass of settings from `--name value` flags (one per field; unknown flags are errors)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        kind = type(f.default) if f.default is not None else str
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=boolean, default=f.default, metavar="BOOL")
        else:
            parser.add_argument(flag, type=kind, default=f.default)
    return cls(**vars(parser.parse_args(argv)))


def check_settings(s, **choices) -> None:
    """Every flag checked before anything heavy runs; all problems in one UserError.

    Fields a script lacks are skipped; `choices` adds the script's own (`objective=("consistency",
    "diffusion")`). Input files and folders must exist; --sd15 and --data are required.
    """
    values, problems = dataclasses.asdict(s), []

    def need(field, ok, what):
        if field in values and not ok(values[field]):
            problems.append(f"--{field.replace('_', '-')} must be {what} (got {values[field]!r})")

    for field in ("steps", "batch", "grad_accum", "save_every", "log_every", "frames", "stride", "lora_rank"):
        need(field, lambda v: v >= 1, "at least 1")
    for field in ("warmup_steps", "val_every", "workers", "lr_anneal_at"):
        need(field, lambda v: v >= 0, "0 or more")
    for field in ("lr", "grad_clip", "lora_alpha"):
        need(field, lambda v: math.isfinite(v) and v > 0, "a positive number")
    for field in ("w_min", "w_max", "direct_w"):
        need(field, lambda v: math.isfinite(v) and v >= 0, "a number, 0 or more")
    need("motion_scale", math.isfinite, "a finite number")
    need("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)")
    need("caption_dropout", lambda v: 0 <= v <= 1, "in [0, 1]")
    need("lr_anneal_factor", lambda v: math.isfinite(v) and 0 < v <= 1, "in (0, 1]")
    need("size", lambda v: v >= 8 and v % 8 == 0, "a positive multiple of 8")
    need("original_steps", lambda v: 1 <= v <= 1000, "between 1 and 1000")
    for field, allowed in {"precision": PRECISIONS, "loss": LOSSES, "beta_schedule": SCHEDULES, **choices}.items():
        need(field, lambda v: v in allowed, " or ".join(allowed))
    if values.get("w_min", 0) > values.get("w_max", math.inf):
        problems.append(f"--w-min {s.w_min} is above --w-max {s.w_max}")
    if device_problem(s.device, allow_auto=True):
        problems.append(device_problem(s.device, allow_auto=True))
    for field in ("sd15", "data"):
        if not values[field]:
            problems.append(f"--{field} is required")
    for field in ("sd15", "teacher_motion", "lora", "motion", "controlnet", "data", "control_data"):
        if values.get(field) and not Path(values[field]).exists():
            problems.append(f"--{field.replace('_', '-')} {values[field]}: no such file or folder")
    if s.resume and s.overwrite:
        problems.append("--resume true continues the run in --out, --overwrite true deletes it: pass one of them")
    if problems:
        raise UserError("; ".join(problems))


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
    """Average gradients over processes, clip, step (unless the norm is not finite), clear; returns the
    gradient norm before clipping.

    Under torchrun this is DistributedDataParallel's all-reduce, done explicitly once per optimizer
    step (after gradient accumulation): the trainable LoRA and adapters are called through hooks and
    side networks, not through one module that a DDP wrapper could own.
    """
    if rt.distributed:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= rt.world
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip).item()
    if math.isfinite(grad_norm):  # a NaN/inf gradient would make the weights NaN: no step (the loop stops)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file of this process, then rename: a crash or a full disk never leaves a
    half-written checkpoint. NaN or inf anywhere in `state` is refused (NonFiniteError), never written."""
    check_finite(state, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


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


def check_batch(dataset, s, rt: Runtime) -> None:
    """Refuse a global batch larger than the data (before any model loads)."""
    if len(dataset) < s.batch * rt.world:
        processes = f" on {rt.world} processes" if rt.distributed else ""
        raise UserError(f"--batch {s.batch}{processes} needs at least {s.batch * rt.world} {dataset.kind}; "
                        f"{dataset.folder} has {len(dataset)}: lower --batch or add data")


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
    """While the loop runs, SIGINT/SIGTERM only record the signal; the loop saves a checkpoint at the
    end of the step and stops. The previous handlers come back when the loop ends."""

    def __enter__(self):
        self.signum = 0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self, rt: Runtime) -> int:
        """The signal's number on every process once any process got one (0: none), so no rank waits."""
        if not rt.distributed:
            return self.signum
        flag = torch.tensor([float(self.signum)], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


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


def learning_rate(step: int, s) -> float:
    """The learning rate of optimizer step `step`: --lr after the warm-up, times --lr-anneal-factor from
    step --lr-anneal-at on (0: never). A diffusion model that has learnt the layout of its images at the
    full rate draws their details sharper after such a drop (the toy teacher: docs/toy-world.md 5.3, 5.4)."""
    factor = s.lr_anneal_factor if s.lr_anneal_at and step >= s.lr_anneal_at else 1.0
    return s.lr * warmup(step, s.warmup_steps) * factor


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

    Per optimizer step: the learning rate (`learning_rate`: warm-up, then an optional drop); `grad_accum`
    micro-batches, each drawn from `batches` with one generator per sample (`sample_generators`, keyed
    by the global batch number, so the run is the same on 1 or N processes and after `--resume`),
    `loss_fn(batch, generators) -> (per-sample loss [B], t [B])` and backward; averaged gradients,
    clipping, the step; `after_step()` (EMA); a JSONL record with the loss per timestep bucket;
    `checkpoint(step)` every `save_every` steps and at the end; `validate(step)` on rank 0 every
    `val_every` steps (a dict it returns is logged).
    What can go wrong: a non-finite loss or gradient stops the run before the optimizer step, and
    NaN/inf weights are never saved, so checkpoint.pt always holds the last finite step (the message
    says which); a save that fails (a full disk) leaves the previous one whole; SIGINT/SIGTERM finish
    the step, save, and raise `Interrupted` (exit code 130/143 from the command line).
    `s` needs: steps, grad_accum, batch, seed, lr, warmup_steps, lr_anneal_at, lr_anneal_factor,
    grad_clip, log_every, save_every, val_every, out.
    """
    out = Path(s.out)
    log = JsonlLog(out / "log.jsonl", rt.main)
    bar = tqdm(total=s.steps, initial=step, disable=not rt.main, desc=desc)
    saved = step  # the step of the last complete save (a resumed run starts from one)

    def kept() -> str:
        return f"{out / 'checkpoint.pt'} holds step {saved} (finite weights)" if saved else "nothing was saved yet"

    def save(step: int) -> None:
        try:
            checkpoint(step)
        except NonFiniteError as e:
            raise UserError(f"the weights became NaN or inf by step {step} ({e}); {kept()}: run again with "
                            "--resume true and a lower --lr") from e
        except OSError as e:
            raise UserError(f"could not save step {step} ({os_error(e)}); the last complete save is step {saved}, "
                            "and a failed save leaves it whole") from e

    with StopSignal() as stop:
        signum = 0
        while step < s.steps:
            set_lr(optimizer, learning_rate(step, s))
            losses, timesteps = [], []
            try:
                for micro in range(s.grad_accum):
                    number = step * s.grad_accum + micro  # the global batch number: data and randomness
                    per_sample, t = loss_fn(next(batches), sample_generators(s.seed, number, rt.rank * s.batch,
                                                                             s.batch))
                    (per_sample.mean() / s.grad_accum).backward()
                    losses.append(per_sample.detach())
                    timesteps.append(t.detach())
            except Exception:
                if not stop.signum:  # a signal can kill DataLoader workers mid-step: keep the last step
                    raise
                optimizer.zero_grad(set_to_none=True)
                signum = stop.signum
                break
            per_sample, t = torch.cat(losses), torch.cat(timesteps)
            loss = global_mean(per_sample.mean(), rt)
            grad_norm = optimizer_step(optimizer, params, s.grad_clip, rt) if math.isfinite(loss) else math.nan
            if not math.isfinite(grad_norm):  # no optimizer step was taken
                what = "loss" if not math.isfinite(loss) else "gradient"
                precision = ", or --precision fp32" if rt.device.type == "cuda" else ""  # autocast is GPU only
                raise UserError(f"non-finite {what} at step {step + 1}: stopped before the optimizer step; {kept()}: "
                                f"run again with --resume true and a lower --lr{precision}")
            after_step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % s.log_every == 0 or step == s.steps:
                memory = {"peak_memory_gb": round(torch.cuda.max_memory_allocated(rt.device) / 2 ** 30, 3)} \
                    if rt.device.type == "cuda" else {}
                log.write(step=step, loss=loss, grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"],
                          **timestep_buckets(t.cpu(), per_sample.cpu()), **memory)
            signum = stop.agreed(rt)
            if step % s.save_every == 0 or step == s.steps or signum:
                save(step)
                saved = step
            if validate is not None and rt.main and s.val_every > 0 and (step % s.val_every == 0 or step == s.steps):
                record = validate(step)  # samples; a dict it returns (e.g. --val-score numbers) joins the log
                if record:
                    log.write(step=step, **record)
            if signum:
                break
    bar.close()
    if step < s.steps and signum:
        if saved != step:
            save(step)
        if rt.distributed:
            dist.barrier()
        raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {step} of {s.steps}; "
                          f"{out / 'checkpoint.pt'} holds it: continue with the same command and --resume true",
                          128 + signum)
    if rt.distributed:
        dist.barrier()
    return step


def teardown(rt: Runtime) -> None:
    if rt.distributed:
        dist.destroy_process_group()
