"""The UNet's shape: one dataclass, SD1.5 and tiny presets, and reading it off a checkpoint.

Everything that tensor shapes determine (channel widths, levels, layers, text width, which
levels have attention, motion modules present, mid-block module, image encoder) is read from the
weights by `from_state_dict`, so a full-size file and a tiny toy file load through one code path.
What shapes cannot tell (head counts, GroupNorm groups) keeps SD1.5 defaults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

FRAME_NORMS = ("per_frame", "joint")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    # Which down levels carry spatial transformers; the up path mirrors it (SD1.5: all but the last).
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_heads: int = 8  # SD1.5 uses 8 heads in every spatial transformer
    norm_groups: int = 32
    # Video inflation (AnimateDiff / AnimateLCM motion modules).
    motion_modules: bool = False
    motion_mid_block: bool = False  # v2 and AnimateLCM have one in the mid block, v1/v3 do not
    motion_heads: int = 8
    motion_max_frames: int = 32  # longest video the motion module takes (its position-table length)
    # AnimateDiff v1 normalises the spatial ResNet GroupNorms over all frames of a video ("joint");
    # v2, v3 and AnimateLCM normalise each frame on its own ("per_frame").
    frame_norm: str = "per_frame"
    image_encoder: bool = False  # AnimateLCM-I2V image encoder (`img_encoder.*`)

    def __post_init__(self):
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per level of block_out_channels")
        if self.frame_norm not in FRAME_NORMS:
            raise ValueError(f"frame_norm must be one of {FRAME_NORMS}, got {self.frame_norm!r}")
        for c in self.block_out_channels:
            if c % self.norm_groups or c % self.attention_heads or c % self.motion_heads:
                raise ValueError(f"channel width {c} must be divisible by norm_groups "
                                 f"({self.norm_groups}) and the head counts")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @classmethod
    def sd15(cls, **overrides) -> "UNetConfig":
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """Two levels of 32/64 channels: seconds on a CPU, same code paths as SD1.5."""
        base = cls(block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=2,
                   cross_attention_dim=32, attention_heads=4, motion_heads=4, norm_groups=8)
        return replace(base, **overrides)

    def with_motion(self, motion: "MotionConfig") -> "UNetConfig":
        return replace(self, motion_modules=True, motion_mid_block=motion.mid_block,
                       motion_max_frames=motion.max_frames, frame_norm=motion.frame_norm,
                       image_encoder=motion.image_encoder)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], **defaults) -> "UNetConfig":
        """Read the spatial architecture from a UNet state dict in our (diffusers-style) names."""
        levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))})
        if not levels or "conv_in.weight" not in state:
            raise ValueError("not a UNet state dict (no conv_in / down_blocks keys)")
        widths = tuple(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels)
        layers = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.resnets.")})
        attention = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in levels)
        context = state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        return replace(cls(**defaults), in_channels=state["conv_in.weight"].shape[1],
                       out_channels=state["conv_out.weight"].shape[0], block_out_channels=widths,
                       attention_levels=attention, layers_per_block=layers, cross_attention_dim=context)


@dataclass(frozen=True)
class MotionConfig:
    """What a motion-module file says about itself (see unet/load.py: detect_motion_version)."""
    version: str  # its layout: "animatediff_v1"/"_v2"/"_v3", "animatelcm_t2v" or "animatelcm_i2v"
    mid_block: bool
    max_frames: int
    frame_norm: str
    image_encoder: bool = False
