"""One process or several (torchrun): the device, the process group, gradients averaged over processes,
mixed precision, and the per-sample randomness that makes N processes draw what one process draws."""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist


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


def teardown(rt: Runtime) -> None:
    if rt.distributed:
        dist.destroy_process_group()


def autocast(rt: Runtime, precision: str):
    """bf16/fp16 autocast on GPU; full precision on CPU (tiny configs) or when asked for fp32."""
    if rt.device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def low_precision(rt: Runtime, precision: str) -> torch.dtype | None:
    """The dtype frozen weights may be stored in: autocast's on GPU, None (keep fp32) otherwise."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if rt.device.type == "cuda" else None


def sample_generators(seed: int, batch_number: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, global batch number, index in the global batch).

    Every random draw of a sample (VAE posterior, timestep, noise, guidance weight) comes from its
    generator, so a run draws the same numbers on 1 or N processes and after a resume.
    (Python's hash of a tuple of ints is the same in every process.)
    """
    return [torch.Generator().manual_seed(hash((seed, batch_number, first + i)) % 2 ** 62) for i in range(count)]


def clip_gradients(params: list[torch.Tensor], max_norm: float, rt: Runtime) -> float:
    """The gradients averaged over processes, then clipped to `max_norm`; returns their norm before clipping.

    The average is DistributedDataParallel's all-reduce done explicitly, once per optimizer step (after
    gradient accumulation): the trainable LoRAs and adapters are called through hooks and side networks,
    not through one module that a DDP wrapper could own.
    """
    if rt.distributed:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= rt.world
    return torch.nn.utils.clip_grad_norm_(params, max_norm).item()


def global_mean(value: torch.Tensor, rt: Runtime) -> float:
    """The mean of a scalar over all processes (the same number on every rank)."""
    value = value.detach().float().reshape(1).to(rt.device)
    if rt.distributed:
        dist.all_reduce(value)  # a sum (gloo has no AVG)
    return value.item() / rt.world


def agreed_signal(signum: int, rt: Runtime) -> int:
    """A stop signal's number on every process once any process got one (0: none), so no rank waits."""
    if not rt.distributed:
        return signum
    flag = torch.tensor([float(signum)], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
