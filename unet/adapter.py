"""AnimateLCM-I2V image encoder: a T2I-Adapter-style network over the image latent.

The first frame's latent, repeated over all frames, goes through a zero-initialised conv, gets a
sinusoidal frame-index signal scaled by `motion_scale` (0 gives a still video, larger values more
motion), and then residual blocks; one feature map per UNet level is added to the UNet's hidden
state after the last layer of that down block (AnimateLCM paper, teacher-free adaptation).
Names follow the published `img_encoder.*` keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .motion import sinusoidal_positions


class AdapterBlock(nn.Module):
    """[avg-pool 2x] -> [1x1 channel change] -> 3x3 conv -> ReLU -> 1x1 conv, plus identity."""

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.in_conv = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.block2 = nn.Conv2d(cout, cout, 1)

    def forward(self, x):
        if self.downsample:  # replicate-pad odd sizes to even, then 2x2 average pooling
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode="replicate")
            x = F.avg_pool2d(x, 2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class ImageEncoder(nn.Module):
    def __init__(self, in_channels: int, channels: tuple[int, ...], blocks_per_level: int = 2):
        super().__init__()
        self.blocks_per_level = blocks_per_level
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.body = nn.ModuleList(
            AdapterBlock(channels[max(i - 1, 0)] if j == 0 else c, c, downsample=i > 0 and j == 0)
            for i, c in enumerate(channels) for j in range(blocks_per_level))
        # Zero-initialised like the original, so a new encoder starts as "no image".
        for conv in [self.conv_in] + [m for b in self.body for m in (b.in_conv, b.block2) if m is not None]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, image_latent: torch.Tensor, frames: int, motion_scale: float = 0.8) -> list[torch.Tensor]:
        """image_latent: [B, C, h, w] (scaled VAE latent) -> one [B*F, C_i, h_i, w_i] map per level."""
        x = self.conv_in(image_latent)  # the same for every frame: compute once, then repeat
        positions = sinusoidal_positions(frames, x.shape[1]).to(x)  # [F, C]
        x = x[:, None] + motion_scale * positions[None, :, :, None, None]  # [B, F, C, h, w]
        x = x.flatten(0, 1)  # [B*F, C, h, w]
        features = []
        for i, block in enumerate(self.body):
            x = block(x)
            if (i + 1) % self.blocks_per_level == 0:
                features.append(x)
        return features
