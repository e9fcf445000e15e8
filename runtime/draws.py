"""The random numbers a training step draws for each sample, each from the sample's own generator.

    generators = run.generators(step, micro)           # one torch.Generator per sample of the micro-batch
    w = uniform(generators, 2.0, 5.0)                  # [B]
    n = integers(generators, 50)                       # [B], in {0, ..., 49}
    noise = normal(generators, x0.shape[1:])           # [B, *shape]

A sample's numbers depend only on its place in the global batch (runtime/distributed.py:sample_generators),
so one process and several draw the same, and a resumed run draws them again. The draws are on the CPU:
move them to the model's device where they are used.
"""
from __future__ import annotations

import torch


def uniform(generators: list[torch.Generator], low: float, high: float) -> torch.Tensor:
    """[B] floats, one per sample, uniform in [low, high)."""
    return torch.cat([low + (high - low) * torch.rand(1, generator=g) for g in generators])


def integers(generators: list[torch.Generator], high: int) -> torch.Tensor:
    """[B] integers, one per sample, uniform in {0, ..., high - 1}."""
    return torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators])


def normal(generators: list[torch.Generator], shape) -> torch.Tensor:
    """[B, *shape] standard normal noise, one tensor of `shape` per sample."""
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])


def coin_flips(generators: list[torch.Generator], p: float) -> torch.Tensor:
    """[B] booleans, one per sample, each True with probability p."""
    return torch.cat([torch.rand(1, generator=g) for g in generators]) < p
