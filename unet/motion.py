"""AnimateDiff / AnimateLCM motion modules: temporal transformers over the frame axis.

Module names follow the published AnimateDiff and AnimateLCM files
(`motion_modules.j.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q`, ...), so
those files load without renaming.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention import Attention, FeedForward


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Frame-position table [length, dim]: sin on even channels, cos on odd, w_i = 10000^(-2i/dim)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)
    return table


class TemporalBlock(nn.Module):
    """Two temporal self-attentions (frame positions added to their input) and a feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([Attention(dim, heads), Attention(dim, heads)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B*H*W, F, C]
        # A fixed table, computed and never loaded: files store it under different names and
        # lengths (24/32 in AnimateDiff v1/v2/v3, none in AnimateLCM), always with these values.
        positions = sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x) + positions)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(channels, heads)])
        self.proj_out = nn.Linear(channels, channels)  # zero-initialised: a new module starts as identity
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        # GroupNorm per frame, as the official AnimateDiff/AnimateLCM code does (diffusers'
        # AnimateDiffTransformer3D normalises over all frames instead; the released weights were
        # trained with per-frame statistics).
        hidden = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)  # [B*F, H*W, C]
        hidden = self.proj_in(hidden)
        # Frames become the sequence axis: [B*F, H*W, C] -> [B*H*W, F, C]
        hidden = hidden.view(bf // frames, frames, h * w, c).transpose(1, 2).reshape(-1, frames, c)
        for block in self.transformer_blocks:
            hidden = block(hidden)
        hidden = self.proj_out(hidden)
        # And back: [B*H*W, F, C] -> [B*F, C, H, W]
        hidden = hidden.view(bf // frames, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return x + hidden


class MotionModule(nn.Module):
    """One motion module; the wrapper exists so keys read `temporal_transformer.` as in the files."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, groups)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
