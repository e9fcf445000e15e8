"""Will it fit my GPU: the peak memory and the FLOPs of one training step of a stage, counted on the CPU.

    python -m benchmarks.budget --stage video --frames 16 --size 512     # stage 2 at SD1.5 size, 16 x 512²
    python -m benchmarks.budget --stage image --precision fp32 --gradient-checkpointing false
    python -m benchmarks.budget --stage adapter --adapter controlnet --controlnet any.pth
    python -m benchmarks.budget --stage teacher --train motion --size 256

--stage picks the script (teacher: train_teacher.py, image: train_image.py, video: train_video.py,
adapter: train_adapter.py); every other flag is that script's own (--frames, --size, --batch,
--precision, --gradient-checkpointing, --direct, --adapter, --train, --ema-decay, ...), with its defaults.
Files are not read: the models have SD1.5's shapes (--model tiny or small for checks), and the
script's own function builds them from there (what trains, what is frozen, the copies, the frozen
weights in bf16 where the script stores them so). Then one step of the script's loop runs as written
(encode the batch, the draws, the loss, backward, clipping, AdamW, the EMA update) on fake tensors:
shapes and dtypes, no memory, no arithmetic (`benchmarks/memory.py`). --device names the GPU's rules
(the default: cuda, bf16 autocast with CUDA's fp32 ops; cpu: everything in fp32).
Printed: the peak of live tensor memory, split by role, the memory while the models are built, and
the FLOPs of the step. Not counted: the CUDA context (about 0.5 GiB), what the caching allocator holds
beyond live tensors, cuDNN/cuBLAS workspaces and kernels' internal buffers. docs/gpu-budget.md has the
table and how the count compares with a measured GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.budget_stages import ROLES, SCRIPTS, SIZES, STAGES, Run
from benchmarks.memory import FlopCount, LiveMemory, NoValues, cuda_fp32_ops, fake_modules
from runtime import cli
from runtime.distributed import Runtime, low_precision, sample_generators
from runtime.settings import parse_settings


def synthetic_batch(s, frames: bool) -> dict:
    """A batch as the data loader gives it: pixels in [-1, 1] (control videos in [0, 1]) and captions."""
    shape = (s.batch, 3, s.frames, s.size, s.size) if frames else (s.batch, 3, s.size, s.size)
    batch = {"pixels": torch.rand(shape) * 2 - 1, "captions": ["a boat sailing on a calm lake"] * s.batch}
    if "controlnet" in (getattr(s, "adapter", ""), getattr(s, "train", "")):
        batch["control"] = torch.rand(shape)
    return batch


def count(stage: str, s, size: str = "sd15", fake: bool = True) -> dict:
    """Build `stage`'s models with settings `s` (the script's Settings) at `size` and count one optimizer step
    of its loop; `fake` False runs it on real CPU tensors instead (tiny and small sizes), for checking."""
    gpu = torch.device("cuda" if s.device == "auto" else s.device).type == "cuda"
    low = low_precision(Runtime(torch.device("cuda" if gpu else "cpu")), s.precision)  # the rule on that device
    memory = LiveMemory()
    run = Run(size, "meta" if fake else "cpu", torch.device("cpu"), low, memory)
    memory.phase = "building"
    with NoValues(), memory, torch.device(run.built_on):
        parts = STAGES[stage](s, run)
    setup_peak, setup = memory.peak, memory.total
    trained = {id(p) for p in parts.trainable}
    weights = {id(t): t for m in parts.models for t in [*m.parameters(), *m.buffers()]}
    frozen_low = any(t.dtype == low for k, t in weights.items() if k not in trained)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    if fake:
        fake_modules(parts.models, mode)
    memory.assign([t for k, t in weights.items() if k not in trained], "other weights")
    memory.assign(parts.trainable, "trained weights")
    with mode, cuda_fp32_ops() if gpu else contextlib.nullcontext(), NoValues(), memory:
        optimizer = torch.optim.AdamW(parts.trainable, lr=s.lr, weight_decay=s.weight_decay, foreach=gpu)
        first_step(optimizer, parts.trainable, memory)
        video = stage in ("video", "adapter") or (stage == "teacher" and s.train in ("motion", "controlnet"))
        memory.phase = "forward"
        memory.reset_peak()
        with FlopCount() as flops:
            for micro in range(s.grad_accum):  # the loop's body, as the script has it
                parts.micro_step(synthetic_batch(s, video), sample_generators(s.seed, micro, 0, s.batch))
            memory.phase = "optimizer step"
            after_backward = {role: memory.now.get(role, 0) for role in ROLES}
            torch.nn.utils.clip_grad_norm_(parts.trainable, s.grad_clip)  # clip_gradients on one process
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            memory.phase = "EMA update"
            parts.after_step()
    return {"stage": stage, "size": size, "gpu": gpu, "frozen_low": frozen_low, "settings": dataclasses.asdict(s),
            "trained_parameters": sum(p.numel() for p in parts.trainable), "setup_peak": setup_peak, "setup": setup,
            "peak": memory.peak, "peak_phase": memory.peak_phase, "phase_peaks": memory.phase_peaks,
            "at_peak": {role: memory.at_peak.get(role, 0) for role in ROLES}, "after_backward": after_backward,
            "flops": flops.total}


def first_step(optimizer: torch.optim.Optimizer, trainable: list, memory: LiveMemory) -> None:
    """Make the state AdamW makes at its first step (it holds it from then on), and count each gradient as one
    from the moment it is accumulated into its parameter."""
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    memory.assign([t for state in optimizer.state.values() for t in state.values()], "optimizer state")
    for p in trainable:
        p.register_post_accumulate_grad_hook(lambda p: memory.assign([p.grad], "gradients"))


def describe(result: dict) -> str:
    s, gib = result["settings"], 2 ** 30
    video = "frames" in s and (result["stage"] != "teacher" or s["train"] in ("motion", "controlnet"))
    shape = f"{s['batch']} x {s['frames']} frames of" if video else f"{s['batch']} x"
    rules = "fp32"
    if result["gpu"] and s["precision"] != "fp32":
        rules = f"{s['precision']} autocast, frozen weights in {s['precision'] if result['frozen_low'] else 'fp32'}"
    lines = [f"{result['stage']} ({SCRIPTS[result['stage']].__name__}.py), {result['size']} size, {shape} "
             f"{s['size']}x{s['size']}, {rules}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}"
             f", on {'a GPU' if result['gpu'] else 'the CPU'}",
             f"  peak while the models are built {result['setup_peak'] / gib:8.2f} GiB (then {result['setup'] / gib:.2f})",
             f"  peak of a training step         {result['peak'] / gib:8.2f} GiB, in the {result['peak_phase']}:"]
    lines += [f"    {role:<28}  {result['at_peak'][role] / gib:8.2f} GiB" for role in ROLES]
    lines.append("  the peak of each phase: " + ", ".join(f"{phase} {peak / gib:.2f} GiB"
                                                       for phase, peak in result["phase_peaks"].items()))
    lines.append(f"  {result['trained_parameters'] / 1e6:.1f} M trained parameters; "
                 f"{result['flops'] / 1e12:.2f} TFLOP per optimizer step")
    return "\n".join(lines)


def parse(argv=None):
    """(stage, model size, fake, the script's Settings) from the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=STAGES, required=True, help="the training script")
    p.add_argument("--model", choices=SIZES, default="sd15", help="the models' size (tiny, small: for checks)")
    p.add_argument("--fake", type=cli.boolean, default=True, help="false: real CPU tensors (tiny, small)")
    args, rest = p.parse_known_args(argv)
    s = parse_settings(SCRIPTS[args.stage].Settings, rest, f"the flags of {SCRIPTS[args.stage].__name__}.py")
    if not args.fake and args.model == "sd15":
        raise cli.UserError("--fake false runs real tensors: use it with --model tiny or small")
    if s.device.split(":")[0] not in ("auto", "cuda", "cpu"):
        raise cli.UserError(f"--device {s.device!r}: count for cuda (a GPU's rules, the default) or cpu")
    return args.stage, args.model, args.fake, s


def main(argv=None):
    stage, size, fake, s = parse(argv)
    print(describe(count(stage, s, size, fake)))


if __name__ == "__main__":
    sys.exit(cli.run(main))
