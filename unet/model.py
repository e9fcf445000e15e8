"""The SD1.5 UNet, and its video inflation with AnimateDiff motion modules.

One class serves images ([B, 4, H, W]) and videos ([B, 4, F, H, W]). For videos, frames are folded
into the batch for every spatial layer; motion modules (when the config has them) mix information
across frames after each ResNet/attention pair. Module names follow diffusers' UNet names
(`down_blocks.1.attentions.0...`), which is also how kohya LoRA files name their layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer
from .blocks import Downsample, ResnetBlock, TimestepMLP, Upsample, group_norm, timestep_embedding
from .config import UNetConfig
from .motion import MotionModule


class Layer(nn.Module):
    """Base for the three block kinds: one 'layer' = ResNet -> spatial attention? -> motion module?"""

    gradient_checkpointing = False

    def _build(self, cfg: UNetConfig, in_widths: list[int], width: int, attention: bool):
        joint = cfg.frame_norm == "joint"
        self.resnets = nn.ModuleList(
            ResnetBlock(cin, width, cfg.time_embed_dim, cfg.norm_groups, joint) for cin in in_widths)
        self.attentions = nn.ModuleList(
            SpatialTransformer(width, cfg.attention_heads, cfg.cross_attention_dim, cfg.norm_groups)
            for _ in in_widths) if attention else None
        self.motion_modules = nn.ModuleList(
            MotionModule(width, cfg.motion_heads, cfg.norm_groups)
            for _ in in_widths) if cfg.motion_modules else None

    def layer(self, j: int, x, temb, context, frames: int, motion: bool, extra=None):
        if self.gradient_checkpointing and self.training:
            return checkpoint(self._layer, j, x, temb, context, frames, motion, extra, use_reentrant=False)
        return self._layer(j, x, temb, context, frames, motion, extra)

    def _layer(self, j, x, temb, context, frames, motion, extra):
        x = self.resnets[j](x, temb, frames)
        if self.attentions is not None:
            x = self.attentions[j](x, context, frames)
        if extra is not None:  # AnimateLCM-I2V image features join here, before the motion module
            x = x + extra
        if motion and self.motion_modules is not None:
            x = self.motion_modules[j](x, frames)
        return x


class DownBlock(Layer):
    def __init__(self, cfg: UNetConfig, cin: int, width: int, attention: bool, downsample: bool):
        super().__init__()
        self._build(cfg, [cin] + [width] * (cfg.layers_per_block - 1), width, attention)
        self.downsamplers = nn.ModuleList([Downsample(width)]) if downsample else None

    def forward(self, x, temb, context, frames, motion, extra=None):
        skips = []
        for j in range(len(self.resnets)):
            last = j == len(self.resnets) - 1
            x = self.layer(j, x, temb, context, frames, motion, extra if last else None)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(Layer):
    """ResNet -> attention -> (motion module) -> ResNet."""

    def __init__(self, cfg: UNetConfig, width: int):
        super().__init__()
        self._build(cfg, [width], width, attention=True)
        if not cfg.motion_mid_block:
            self.motion_modules = None
        self.resnets.append(ResnetBlock(width, width, cfg.time_embed_dim, cfg.norm_groups,
                                        cfg.frame_norm == "joint"))

    def forward(self, x, temb, context, frames, motion):
        x = self.layer(0, x, temb, context, frames, motion)
        return self.resnets[1](x, temb, frames)


class UpBlock(Layer):
    def __init__(self, cfg: UNetConfig, cin: int, width: int, skip_widths: list[int], attention: bool,
                 upsample: bool):
        super().__init__()
        in_widths = [(cin if j == 0 else width) + skip for j, skip in enumerate(skip_widths)]
        self._build(cfg, in_widths, width, attention)
        self.upsamplers = nn.ModuleList([Upsample(width)]) if upsample else None

    def forward(self, x, temb, context, frames, motion, skips: list[torch.Tensor]):
        for j in range(len(self.resnets)):
            x = self.layer(j, torch.cat([x, skips.pop()], dim=1), temb, context, frames, motion)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size=skips[-1].shape[-2:])
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        widths, levels = cfg.block_out_channels, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepMLP(widths[0], cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        skip_widths = [widths[0]]  # channels of every skip connection, in the order they are made
        for i, width in enumerate(widths):
            last = i == levels - 1
            self.down_blocks.append(DownBlock(cfg, widths[max(i - 1, 0)], width, cfg.attention_levels[i],
                                              downsample=not last))
            skip_widths += [width] * (cfg.layers_per_block + (not last))

        self.mid_block = MidBlock(cfg, widths[-1])

        self.up_blocks = nn.ModuleList()
        cin = widths[-1]
        for i, (width, attention) in enumerate(zip(reversed(widths), reversed(cfg.attention_levels))):
            skips = [skip_widths.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(cfg, cin, width, skips, attention, upsample=i < levels - 1))
            cin = width

        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, widths[0], eps=1e-5)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)
        self.img_encoder = None
        if cfg.image_encoder:
            from .adapter import ImageEncoder
            self.img_encoder = ImageEncoder(cfg.in_channels, cfg.block_out_channels)
        # Channels-last weights make every conv output channels-last, which is faster for the convs
        # (oneDNN, cuDNN) and turns the [B, C, H, W] <-> [B, H*W, C] reshapes around attention into views.
        self.to(memory_format=torch.channels_last)

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = on

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                image_features: list[torch.Tensor] | None = None, down_residuals: list[torch.Tensor] | None = None,
                mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        """Predict noise. sample: [B, C, H, W] or [B, C, F, H, W]; context: [B, 77, D] text tokens.

        Motion modules run on videos only; an image input uses the spatial layers alone.

        `image_features` (AnimateLCM-I2V, from `encode_image`): one map per level, [B*F, C_i, h_i, w_i].
        `down_residuals`, `mid_residual` (a ControlNet's output, frames folded into the batch): added to
        each skip connection, [B*F, C_i, h_i, w_i] in order, and to the mid block's output.
        """
        video = sample.dim() == 5
        b, frames = sample.shape[0], sample.shape[2] if video else 1
        if video:
            self.check_frames(frames)
            sample = sample.transpose(1, 2).flatten(0, 1)  # [B, C, F, H, W] -> [B*F, C, H, W]

        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_out_channels[0]).to(sample.dtype))
        temb = temb.repeat_interleave(frames, dim=0)  # [B*F, T]

        x = self.conv_in(sample)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            x, block_skips = block(x, temb, context, frames, video,
                                   image_features[i] if image_features else None)
            skips += block_skips
        x = self.mid_block(x, temb, context, frames, video)
        if down_residuals is not None:  # ControlNet: the skips change, the down path itself does not
            if len(down_residuals) != len(skips):
                raise ValueError(f"{len(down_residuals)} down residuals for {len(skips)} skip connections")
            skips = [skip + residual for skip, residual in zip(skips, down_residuals)]
        if mid_residual is not None:
            x = x + mid_residual
        for block in self.up_blocks:
            x = block(x, temb, context, frames, video, skips)

        joint = frames if self.cfg.frame_norm == "joint" else 1
        x = self.conv_out(F.silu(group_norm(self.conv_norm_out, x, joint)))
        if video:
            x = x.view(b, frames, *x.shape[1:]).transpose(1, 2)  # [B*F, C, H, W] -> [B, C, F, H, W]
        return x

    def encode_image(self, image_latent: torch.Tensor, frames: int, motion_scale: float = 0.8):
        """AnimateLCM-I2V: features of the first-frame latent [B, 4, h, w] for `forward(image_features=)`."""
        if self.img_encoder is None:
            raise ValueError("this UNet has no image encoder; load an AnimateLCM-I2V motion module")
        return self.img_encoder(image_latent, frames, motion_scale)

    def check_frames(self, frames: int) -> None:
        if self.cfg.motion_modules and frames > self.cfg.motion_max_frames:
            raise ValueError(
                f"{frames} frames is more than this motion module's window of "
                f"{self.cfg.motion_max_frames} frames; generate longer videos with overlapping context "
                "windows (sample.py --context-frames) instead.")
