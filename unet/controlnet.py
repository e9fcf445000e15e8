"""ControlNet for SD1.5 (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

A trainable copy of the UNet's encoder (conv_in, down blocks, mid block) sees the latent plus an
embedding of the control image; a zero-initialised 1x1 conv after every skip connection and after
the mid block turns its features into residuals that the frozen UNet adds to its own
(`UNet.forward(down_residuals=, mid_residual=)`). Names follow diffusers' `ControlNetModel`, which
for the shared part are our UNet's names, so a diffusers folder loads as is and a ControlNet-1.1
`.pth` (`control_model.*`, LDM names) through the UNet's rule table plus three small renames.

    controlnet = load_controlnet("control_v11f1p_sd15_depth.pth")
    down, mid = controlnet(latents, t, context, depth_frames)   # [B,4,F,h,w], [B,3,F,8h,8w] in [0, 1]
    noise = unet(latents, t, context, down_residuals=down, mid_residual=mid)
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.weights import (HINTS_KEY, CheckpointError, architecture_hints, describe_checkpoint, load_strict,
                     read_component, save_safetensors, strip_prefix)

from .blocks import TimestepMLP, timestep_embedding
from .config import UNetConfig
from .keymap import unet_from_ldm, unet_to_ldm
from .load import diffusers_config_hints
from .lora import LoRANetwork
from .model import DownBlock, MidBlock

SD15_HINT_CHANNELS = (16, 32, 96, 256)  # diffusers' `conditioning_embedding_out_channels`
LDM_CONTROL_PREFIX = "control_model."
SHARED = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")  # the part copied from the UNet


class ConditioningEmbedding(nn.Module):
    """Control image [N, 3, H, W] -> features [N, C0, H/2^k, W/2^k] added to conv_in's output.

    Pairs of 3x3 convs per width (the second of each pair strides 2), SiLU in between; the last
    conv is zero-initialised so a new ControlNet starts as "no control".
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for cin, cout in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            self.blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight), nn.init.zeros_(self.conv_out.bias)

    def forward(self, x):
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


def zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight), nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    def __init__(self, cfg: UNetConfig, conditioning_channels: int = 3,
                 hint_channels: tuple[int, ...] = SD15_HINT_CHANNELS):
        super().__init__()
        # A ControlNet is an image model: on videos it runs on each frame (no motion modules).
        self.cfg = cfg = replace(cfg, motion_modules=False, motion_mid_block=False, image_encoder=False,
                                 frame_norm="per_frame")
        self.hint_channels = tuple(hint_channels)
        widths, levels = cfg.block_out_channels, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepMLP(widths[0], cfg.time_embed_dim)
        self.controlnet_cond_embedding = ConditioningEmbedding(conditioning_channels, self.hint_channels, widths[0])

        self.down_blocks = nn.ModuleList()
        skip_widths = [widths[0]]  # as in UNet.__init__: the channels of every skip connection, in order
        for i, width in enumerate(widths):
            last = i == levels - 1
            self.down_blocks.append(DownBlock(cfg, widths[max(i - 1, 0)], width, cfg.attention_levels[i],
                                              downsample=not last))
            skip_widths += [width] * (cfg.layers_per_block + (not last))
        self.mid_block = MidBlock(cfg, widths[-1])
        self.controlnet_down_blocks = nn.ModuleList(zero_conv(c) for c in skip_widths)
        self.controlnet_mid_block = zero_conv(widths[-1])
        self.to(memory_format=torch.channels_last)  # like the UNet's

    @classmethod
    def from_unet(cls, unet: nn.Module, conditioning_channels: int = 3,
                  hint_channels: tuple[int, ...] = SD15_HINT_CHANNELS) -> "ControlNet":
        """The standard ControlNet init: the UNet's spatial encoder copied, zero convs at zero."""
        param = next(unet.parameters())
        # New layers are drawn on the CPU (the same draws for every device); a UNet of shapes only stays meta.
        with torch.device("meta" if param.is_meta else "cpu"):
            net = cls(unet.cfg, conditioning_channels, hint_channels)
        net = net.to(param.device, param.dtype)
        shared = {k: v for k, v in unet.state_dict().items() if k.startswith(SHARED) and "motion_modules." not in k}
        load_strict(net, shared, "the UNet's spatial encoder", allow_missing=("controlnet_",))
        return net

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        for block in [*self.down_blocks, self.mid_block]:
            block.gradient_checkpointing = on

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                control: torch.Tensor, scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for `UNet.forward(down_residuals=, mid_residual=)`, multiplied by `scale`.

        sample: [B, 4, h, w] or [B, 4, F, h, w]; control: images in [0, 1], [B, 3, H, W] or
        [B, 3, F, H, W] (H = 8h for SD1.5). Frames are folded into the batch, so the residuals come
        out per frame: [B*F, C_i, h_i, w_i], one per skip connection, and [B*F, C, h/8, w/8].
        """
        video = sample.dim() == 5
        b, frames = sample.shape[0], sample.shape[2] if video else 1
        if video:
            sample = sample.transpose(1, 2).flatten(0, 1)  # [B, 4, F, h, w] -> [B*F, 4, h, w]
            control = control.transpose(1, 2).flatten(0, 1)  # [B, 3, F, H, W] -> [B*F, 3, H, W]

        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_out_channels[0]).to(sample.dtype))
        temb = temb.repeat_interleave(frames, dim=0)  # [B*F, T]

        x = self.conv_in(sample)
        hint = self.controlnet_cond_embedding(control.to(x.dtype))
        if hint.shape != x.shape:
            raise ValueError(f"control images {tuple(control.shape)} do not fit latents {tuple(sample.shape)}: "
                             f"give one control image per latent (frame), {2 ** len(self.hint_channels[1:])}x "
                             "the latent's height and width")
        x = x + hint
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, frames, False)
            skips += block_skips
        x = self.mid_block(x, temb, context, frames, False)
        down = [scale * zero(skip) for zero, skip in zip(self.controlnet_down_blocks, skips)]
        return down, scale * self.controlnet_mid_block(x)


# ---- loading: ControlNet-1.1 (LDM names) or diffusers ControlNetModel ------------------------------

def control_table(hint_convs: int, skips: int) -> dict[str, str]:
    """The ControlNet-only modules: LDM prefix -> ours (the rest is the UNet's encoder table)."""
    # input_hint_block: convs at 0, 2, 4, ... with SiLUs at the odd indices; the last is conv_out.
    table = {"input_hint_block.0": "controlnet_cond_embedding.conv_in",
             f"input_hint_block.{2 * hint_convs - 2}": "controlnet_cond_embedding.conv_out",
             "middle_block_out.0": "controlnet_mid_block"}
    table.update({f"input_hint_block.{2 * k + 2}": f"controlnet_cond_embedding.blocks.{k}"
                  for k in range(hint_convs - 2)})
    table.update({f"zero_convs.{n}.0": f"controlnet_down_blocks.{n}" for n in range(skips)})
    return table


def _rename(state: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        module, dot, leaf = key.rpartition(".")  # `prefix.weight` / `prefix.bias`
        out[table.get(module, module) + dot + leaf] = value
    return out


def controlnet_from_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ControlNet-1.1 keys (without `control_model.`) -> our names."""
    hint_convs = sum(bool(re.match(r"input_hint_block\.\d+\.weight$", k)) for k in state)
    skips = sum(bool(re.match(r"zero_convs\.\d+\.0\.weight$", k)) for k in state)
    return _rename(unet_from_ldm(state), control_table(hint_convs, skips))


def controlnet_hints(net: "ControlNet") -> dict:
    """What a loader cannot read from the shapes, for the metadata of a saved file."""
    return {"controlnet": {"attention_heads": net.cfg.attention_heads, "norm_groups": net.cfg.norm_groups}}


def controlnet_state_to_ldm(controlnet: ControlNet) -> dict[str, torch.Tensor]:
    """Our ControlNet's tensors in the ControlNet-1.1 layout (with `control_model.`)."""
    cfg = controlnet.cfg
    state = unet_to_ldm(controlnet.state_dict(), len(cfg.block_out_channels), cfg.layers_per_block,
                        cfg.attention_levels)
    table = control_table(2 * len(controlnet.hint_channels), len(controlnet.controlnet_down_blocks))
    return {LDM_CONTROL_PREFIX + k: v for k, v in _rename(state, {v: k for k, v in table.items()}).items()}


def save_controlnet(controlnet: ControlNet, path, metadata: dict | None = None) -> None:
    """Write a ControlNet-1.1-layout safetensors file, with architecture hints in its metadata."""
    save_safetensors(controlnet_state_to_ldm(controlnet), path,
                     {**(metadata or {}), HINTS_KEY: controlnet_hints(controlnet)})


def read_controlnet(source) -> tuple[dict[str, torch.Tensor], str, Path | None]:
    """(our-named tensors, name for messages, diffusers folder or None) of a ControlNet-1.1 file,
    a diffusers ControlNetModel folder (or pipeline folder with controlnet/), or a state dict."""
    state, name, folder = read_component(source, "controlnet")
    kind = describe_checkpoint(state)
    if "SDXL" in kind or "SD2" in kind:
        raise CheckpointError(f"{name} is {kind}.")
    if any(k.startswith(LDM_CONTROL_PREFIX) for k in state):
        # ControlNet-1.0 files also carry a whole SD1.5 model; the ControlNet is `control_model.*`.
        state = strip_prefix(state, LDM_CONTROL_PREFIX)
    if "zero_convs.0.0.weight" in state or "input_hint_block.0.weight" in state:
        return controlnet_from_ldm(state), name, folder  # ControlNet-1.1, with or without its prefix
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state, name, folder  # diffusers names are ours
    raise CheckpointError(f"{name} is {kind}, not a ControlNet. Pass an SD1.5 ControlNet: a ControlNet-1.1 "
                          "file (control_v11*_sd15_*.pth / .safetensors) or a diffusers ControlNetModel folder.")


def controlnet_architecture(state: dict[str, torch.Tensor], **shape_free) -> tuple[UNetConfig, int, tuple]:
    """(UNet config of the shared part, control image channels, hint channels), from the shapes."""
    # UNetConfig.from_state_dict reads out_channels off conv_out, which a ControlNet lacks: lend it one.
    lent = {**state, "conv_out.weight": state["conv_in.weight"].transpose(0, 1)}
    cfg = UNetConfig.from_state_dict(lent, **shape_free)
    hint_in = state["controlnet_cond_embedding.conv_in.weight"]
    pairs = sum(bool(re.match(r"controlnet_cond_embedding\.blocks\.\d+\.weight$", k)) for k in state) // 2
    hint = (hint_in.shape[0],) + tuple(state[f"controlnet_cond_embedding.blocks.{2 * k + 1}.weight"].shape[0]
                                       for k in range(pairs))
    return cfg, hint_in.shape[1], hint


def load_controlnet(source, *, lora=None, attention_heads: int | None = None, norm_groups: int | None = None,
                    dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> ControlNet:
    """An SD1.5 ControlNet from `source` (file, diffusers folder or state dict), strictly.

    `lora`: a LoRA for it (file or state dict, as train_adapter.py's teacher-free adaptation writes
    it), merged into its weights before any `dtype` cast. Head count and GroupNorm groups come from the
    arguments, else a diffusers folder's config.json or our own files' architecture hints, else SD1.5's
    8 and 32; everything else from the tensor shapes.
    """
    state, name, folder = read_controlnet(source)
    hints = diffusers_config_hints(folder, "unet") if folder else {}  # same config keys as a UNet's
    hints = {**hints, **architecture_hints(source, "controlnet")}
    given = dict(attention_heads=attention_heads, norm_groups=norm_groups)
    shape_free = {k: v if v is not None else hints.get(k, UNetConfig.__dataclass_fields__[k].default)
                  for k, v in given.items()}
    try:
        cfg, conditioning_channels, hint = controlnet_architecture(state, **shape_free)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{name} does not look like a complete SD1.5 ControlNet ({e}).") from e
    with torch.device("meta"):
        net = ControlNet(cfg, conditioning_channels, hint)
    net = net.to_empty(device=device)
    load_strict(net, state, name)
    if lora is not None:
        LoRANetwork.load(net, lora).merge()
    return net.to(dtype) if dtype is not None else net
