"""Longer videos than the motion module's window: overlapping context windows, blended.

The UNet runs on windows of `length` frames that overlap by `overlap`; each window's prediction is
weighted per frame (highest in the window's middle, so seams fade) and the weighted predictions are
averaged per frame. This is the community practice for AnimateDiff (ComfyUI-AnimateDiff-Evolved's
context options); neither AnimateLCM paper describes it.
"""
from __future__ import annotations

from typing import Callable

import torch


def sliding_windows(frames: int, length: int, overlap: int) -> list[list[int]]:
    """Frame indices of each window: steps of `length - overlap`, the last window flush with the end."""
    if not 0 <= overlap < length:
        raise ValueError(f"context overlap must be in [0, {length}), got {overlap}")
    if frames <= length:
        return [list(range(frames))]
    starts = list(range(0, frames - length, length - overlap)) + [frames - length]
    return [list(range(s, s + length)) for s in starts]


def window_weights(length: int) -> torch.Tensor:
    """Pyramid weights [length]: 1, 2, ... up to the middle and back down (never zero)."""
    ramp = torch.arange(1, length + 1, dtype=torch.float32)
    return torch.minimum(ramp, ramp.flip(0))


def blend_windows(model: Callable, frames: int, length: int, overlap: int) -> Callable:
    """A model callable over the whole video [B, C, F, h, w] made of window-sized calls."""
    windows = sliding_windows(frames, length, overlap)
    if len(windows) == 1:
        return model

    def blended(x: torch.Tensor, t) -> torch.Tensor:
        total = torch.zeros_like(x, dtype=torch.float32)
        weight_sum = torch.zeros(frames, dtype=torch.float32, device=x.device)
        for window in windows:
            w = window_weights(len(window)).to(x.device)
            out = model(x[:, :, window], t).float()  # [B, C, length, h, w]
            total[:, :, window] += out * w[None, None, :, None, None]
            weight_sum[window] += w
        return (total / weight_sum[None, None, :, None, None]).to(x.dtype)

    return blended
