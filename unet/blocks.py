"""UNet building blocks: timestep embedding, ResNet block, down/up sampling."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps [B] -> [B, dim], cosine half first (SD1.5's flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, joint_frames: int = 1) -> torch.Tensor:
    """GroupNorm per image, or with statistics over all `joint_frames` frames of each video.

    Frames are folded into the batch ([B*F, C, H, W]); AnimateDiff v1 normalises the video as one
    [B, C, F, H, W] tensor, which is what the joint branch reproduces.
    """
    if joint_frames == 1:
        return norm(x)
    bf, c, h, w = x.shape
    video = x.view(bf // joint_frames, joint_frames, c, h * w).transpose(1, 2)  # [B, C, F, H*W]
    return norm(video).transpose(1, 2).reshape(bf, c, h, w)


class ResnetBlock(nn.Module):
    """Two 3x3 convs with GroupNorm+SiLU, the timestep added in between, and a (1x1) skip."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, joint_frame_norm: bool = False):
        super().__init__()
        self.joint_frame_norm = joint_frame_norm
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int = 1) -> torch.Tensor:
        joint = frames if self.joint_frame_norm else 1
        h = self.conv1(F.silu(group_norm(self.norm1, x, joint)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(group_norm(self.norm2, h, joint)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # Nearest-neighbour to the size of the matching skip (2x, or one less for odd sizes).
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
