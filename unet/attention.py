"""Attention and the SD1.5 spatial transformer (self-attention, cross-attention to text, GEGLU MLP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention: self-attention, or cross-attention to `context`, through SDPA."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # a list so the key reads `to_out.0`

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape

        def split_heads(t):  # [B, N, C] -> [B, heads, N, C/heads]
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    """Gated GELU input layer of the feed-forward: one projection to value and gate halves."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # Indices 0 and 2 hold weights (keys `ff.net.0.proj`, `ff.net.2`); 1 was dropout.
        self.net = nn.ModuleList([GEGLU(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text tokens, and feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int = 1) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        # All frames of a video attend to the same text: fold them into the query length
        # ([B*F, N, C] -> [B, F*N, C]) instead of repeating the context once per frame.
        bf, n, c = x.shape
        x = x + self.attn2(self.norm2(x).view(bf // frames, frames * n, c), context).view(bf, n, c)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """SD1.5's Transformer2DModel: GroupNorm, 1x1 conv in, transformer block(s), 1x1 conv out, residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int = 1) -> torch.Tensor:
        bf, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B*F, H*W, C]
        for block in self.transformer_blocks:
            hidden = block(hidden, context, frames)
        hidden = hidden.transpose(1, 2).reshape(bf, c, h, w)
        return self.proj_out(hidden) + x
