"""What keeps a training run safe, around the loop that each training script writes out itself.

    run = TrainingRun(s, rt, EXPORTED_FILES, "stage 2")  # claims --out before any model loads
    ...                                            # models, optimizer, data
    if run.resume_state is not None:               # --resume true: the checkpoint to continue from
        run.restore(optimizer, online=..., target=...)   # continue bit for bit
    step = run.start_step
    with run.catching_signals(save, validate):     # SIGINT/SIGTERM: finish the step, save, stop
        while step < s.steps:
            ...                                    # the algorithm: loss, backward(); run.collect_losses(loss, t)
            loss = run.step_loss()                 # over the micro-batches and processes
            run.stop_if_not_finite(step, loss, grad_norm)   # before the optimizer step
            ...                                    # optimizer step, EMA
            step += 1
            run.log_save_validate(step, loss, grad_norm, lr)  # the log; a checkpoint and samples when due

What can go wrong, and what happens: a non-finite loss or gradient stops the run before the optimizer
step, and NaN/inf weights are never saved, so checkpoint.pt always holds the last finite step (the
message says which); a write that fails (a full disk: a save, the log, a sample) leaves no partial file
and the previous save whole, and says which step it holds; a signal finishes the step, saves, and raises
`Interrupted` (exit code 130/143 from the command line). Problems the user can fix are `UserError`s
naming what to do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from runtime.cli import Interrupted, UserError, WriteError
from runtime.distributed import (Runtime, agreed_signal, barrier, global_mean, rng_state, sample_generators,
                                 set_rng_state)
from runtime.files import append_text
from runtime.folder import claim_folder, release_folders, restoring, save_checkpoint
from runtime.weights import NonFiniteError


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, s) -> float:
    """Set every parameter group's learning rate for optimizer step `step` (`learning_rate`); returns it."""
    lr = learning_rate(step, s)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def learning_rate(step: int, s) -> float:
    """The learning rate of optimizer step `step`: a linear warm-up to --lr (the LCM recipes' schedule),
    times --lr-anneal-factor from step --lr-anneal-at on (0: never). A diffusion model that has learnt
    the layout of its images at the full rate draws their details sharper after such a drop (the toy
    teacher: docs/toy-world.md)."""
    factor = s.lr_anneal_factor if s.lr_anneal_at and step >= s.lr_anneal_at else 1.0
    return s.lr * min(1.0, (step + 1) / max(1, s.warmup_steps)) * factor


class TrainingRun:
    """One run's --out folder, log, checkpoints and stop signals. `resume_state` is the checkpoint to
    continue from (None: a new run), `start_step` its step; `exported` names the files the run writes for
    its users (claim_folder refuses an --out that holds them)."""

    def __init__(self, s, rt: Runtime, exported: tuple[str, ...], name: str):
        self.s, self.rt, self.name, self.out = s, rt, name, Path(s.out)
        self.resume_state = claim_folder(s, rt, exported)
        self.start_step = self.saved = self.resume_state["step"] if self.resume_state is not None else 0
        if self.resume_state is not None and rt.main:
            print(f"resuming from {self.out / 'checkpoint.pt'} at step {self.start_step}")
        self.log = JsonlLog(self.out / "log.jsonl", rt.main)
        self.signum = 0
        self._losses, self._timesteps = [], []  # this optimizer step's per-sample losses and timesteps

    def generators(self, step: int, micro: int = 0) -> list[torch.Generator]:
        """One generator per sample of this process's micro-batch, keyed by the global batch number, so
        the run draws the same numbers on 1 or N processes and after --resume."""
        s = self.s
        return sample_generators(s.seed, step * s.grad_accum + micro, self.rt.rank * s.batch, s.batch)

    def restore(self, optimizer: torch.optim.Optimizer, **modules) -> None:
        """Continue from `resume_state`: the checkpoint's tensors into each of `modules` (its name in the checkpoint ->
        a module; a partial state, such as stage 2's motion modules alone, loads over the module's own), the
        optimizer's and the RNG's state, so that a resumed run goes on bit for bit."""
        with restoring(self.out / "checkpoint.pt"):
            for name, module in modules.items():
                module.load_state_dict({**module.state_dict(), **self.resume_state[name]})
            optimizer.load_state_dict(self.resume_state["optimizer"])
        set_rng_state(self.resume_state["rng"])

    @contextlib.contextmanager
    def catching_signals(self, save: Callable[[int], None], validate: Callable[[int], dict | None] | None = None):
        """Around the loop: SIGINT and SIGTERM are caught and end the run after the step in progress, saved;
        a progress bar. `save(step)` writes a checkpoint (called every --save-every steps, at the end and on
        a signal), `validate(step)` writes samples on rank 0 (a dict it returns joins the log)."""
        self._save, self._validate = save, validate
        self.step = self.start_step
        self.bar = tqdm(total=self.s.steps, initial=self.start_step, disable=not self.rt.main, desc=self.name)
        previous = {sig: signal.signal(sig, self._record_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        except WriteError as e:  # the log, a sample or a save (_checkpoint tells a save the same way)
            raise self._unwritten(e) from e
        except (Interrupted, UserError):
            raise
        except Exception:
            if not self.signum:  # a bug or an I/O error: as it is
                raise
            self._stop(self.signum)  # a signal can kill DataLoader workers mid-step: keep the last step
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.bar.close()
        barrier(self.rt)

    def collect_losses(self, losses: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Keep a micro-batch's per-sample losses [B] and timesteps [B], for this step's loss and log record."""
        self._losses.append(losses.detach())
        self._timesteps.append(timesteps.detach())

    def step_loss(self) -> float:
        """This optimizer step's loss: the mean of the per-sample losses `collect_losses` kept, over all processes."""
        return global_mean(torch.cat(self._losses).mean(), self.rt)

    def stop_if_not_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """A NaN/inf loss or gradient stops the run here, before the optimizer step could spoil the weights."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        what = "loss" if not math.isfinite(loss) else "gradient"
        precision = ", or --precision fp32" if self.rt.device.type == "cuda" else ""  # autocast is GPU only
        raise UserError(f"non-finite {what} at step {step + 1}: stopped before the optimizer step; {self._kept()}: "
                        f"run again with --resume true and a lower --lr{precision}")

    def log_save_validate(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        """After optimizer step `step` (counted from 1): the progress bar; a log record with the loss per
        timestep quarter; a checkpoint when due; validation when due; a stop when a signal came."""
        s, self.step = self.s, step
        losses, timesteps = torch.cat(self._losses), torch.cat(self._timesteps)
        self._losses, self._timesteps = [], []
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if step % s.log_every == 0 or step == s.steps:
            memory = {"peak_memory_gb": round(torch.cuda.max_memory_allocated(self.rt.device) / 2 ** 30, 3)} \
                if self.rt.device.type == "cuda" else {}
            self.log.write(step=step, loss=loss, grad_norm=grad_norm, lr=lr,
                           **timestep_buckets(timesteps.cpu(), losses.cpu()), **memory)
        signum = agreed_signal(self.signum, self.rt)
        if step % s.save_every == 0 or step == s.steps or signum:
            self._checkpoint(step)
        due = s.val_every > 0 and (step % s.val_every == 0 or step == s.steps)
        if self._validate is not None and self.rt.main and due:
            record = self._validate(step)
            if record:
                self.log.write(step=step, **record)
        if signum and step < s.steps:
            self._stop(signum)

    def save_checkpoint(self, step: int, optimizer: torch.optim.Optimizer, **states) -> None:
        """out/checkpoint.pt: the full resume state (written whole or not at all; never NaN or inf): the step,
        the settings, the optimizer, the RNG, and each of `states` (a module, or a dict of its tensors)."""
        tensors = {name: value.state_dict() if hasattr(value, "state_dict") else value
                   for name, value in states.items()}
        save_checkpoint(self.out / "checkpoint.pt", {"step": step, "settings": dataclasses.asdict(self.s),
                                                     "optimizer": optimizer.state_dict(), "rng": rng_state(),
                                                     **tensors})
        self.saved = step  # what checkpoint.pt holds, even if an export after it fails

    def metadata(self, step: int, schedule) -> dict:
        """What an exported weights file records of its run: settings, noise schedule, step."""
        return {"settings": dataclasses.asdict(self.s), "schedule": dataclasses.asdict(schedule), "step": step}

    def write_sample(self, video: torch.Tensor, name: str) -> None:
        """A validation sample [3, F, H, W] in [0, 1] as out/val/NAME (.png: the first frame; .gif: a video)."""
        from media.video import to_uint8, write_image, write_video
        frames = to_uint8(video)
        path = self.out / "val" / name
        if path.suffix == ".png":
            write_image(frames[0], path)
        else:
            write_video(frames, path, fps=8)

    def _record_signal(self, signum, frame):
        self.signum = signum

    def _kept(self) -> str:
        if not self.saved:
            return "nothing was saved yet"
        return f"{self.out / 'checkpoint.pt'} holds step {self.saved} (finite weights)"

    def _unwritten(self, e: WriteError) -> WriteError:
        """A failed write told for a run: what the checkpoint holds, and --resume true to continue."""
        return e.retold("continue with --resume true", kept=self._kept())

    def _checkpoint(self, step: int) -> None:
        try:
            if self.rt.main:
                self._save(step)
        except NonFiniteError as e:
            raise UserError(f"the weights became NaN or inf by step {step} ({e}); {self._kept()}: run again with "
                            "--resume true and a lower --lr") from e
        except WriteError as e:  # a full disk: the earlier files stay whole
            raise self._unwritten(e) from e
        self.saved = step

    def _stop(self, signum: int) -> None:
        if self.saved != self.step:
            self._checkpoint(self.step)
        barrier(self.rt)
        raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {self.step} of {self.s.steps}; "
                          f"{self.out / 'checkpoint.pt'} holds it: continue with the same command and --resume true",
                          128 + signum)


class JsonlLog:
    """One JSON object per line, appended (rank 0 only), with wall time."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.start = path, enabled, time.time()
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.enabled:
            append_text(self.path, json.dumps({"time": round(time.time() - self.start, 3), **record}) + "\n")


def timestep_buckets(t: torch.Tensor, losses: torch.Tensor, buckets: int = 4, total: int = 1000) -> dict:
    """Mean per-sample loss by timestep quarter, so a run that stops improving somewhere shows it."""
    out = {}
    for b in range(buckets):
        lo, hi = b * total // buckets, (b + 1) * total // buckets
        mask = (t >= lo) & (t < hi)
        if mask.any():
            out[f"loss_t{lo}-{hi - 1}"] = round(losses[mask].mean().item(), 6)
    return out


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module):
    """Modules in eval mode for a validation, then back in the mode each was in."""
    modes = [(m, m.training) for m in modules]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def one_run(main: Callable) -> Callable:
    """Decorates a training script's main: the --out lock it takes is released however main ends
    (so `main(argv)` can be called again from Python after an error)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        finally:
            release_folders()
    return wrapper
