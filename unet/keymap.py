"""Key renaming between checkpoint layouts and our UNet's names (diffusers-style spatial names,
original-AnimateDiff motion-module names). Rule tables, no per-tensor lists.

* LDM / CompVis (`input_blocks.4.1...`) <-> ours (`down_blocks.1.attentions.0...`): a block-prefix
  table computed from the level structure, plus the ResBlock sub-module renames.
* diffusers `MotionAdapter` <-> original AnimateDiff motion-module names.
"""
from __future__ import annotations

import re

import torch

# ResBlock sub-modules: LDM name -> ours (diffusers).
LDM_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def ldm_block_table(levels: int, layers: int, attention: tuple[bool, ...]) -> dict[str, tuple[str, bool]]:
    """LDM block prefix -> (our prefix, is_resnet), for a UNet of this level structure."""
    table = {"time_embed.0": ("time_embedding.linear_1", False), "time_embed.2": ("time_embedding.linear_2", False),
             "input_blocks.0.0": ("conv_in", False), "out.0": ("conv_norm_out", False), "out.2": ("conv_out", False),
             "middle_block.0": ("mid_block.resnets.0", True), "middle_block.1": ("mid_block.attentions.0", False),
             "middle_block.2": ("mid_block.resnets.1", True)}
    n = 1  # input_blocks: `layers` (resnet, attention?) pairs per level, then a downsampler
    for i in range(levels):
        for j in range(layers):
            table[f"input_blocks.{n}.0"] = (f"down_blocks.{i}.resnets.{j}", True)
            if attention[i]:
                table[f"input_blocks.{n}.1"] = (f"down_blocks.{i}.attentions.{j}", False)
            n += 1
        if i < levels - 1:
            table[f"input_blocks.{n}.0.op"] = (f"down_blocks.{i}.downsamplers.0.conv", False)
            n += 1
    n = 0  # output_blocks: `layers + 1` per level, the upsampler rides in the level's last one
    for i, has_attention in enumerate(reversed(attention)):
        for j in range(layers + 1):
            table[f"output_blocks.{n}.0"] = (f"up_blocks.{i}.resnets.{j}", True)
            if has_attention:
                table[f"output_blocks.{n}.1"] = (f"up_blocks.{i}.attentions.{j}", False)
            if j == layers and i < levels - 1:
                table[f"output_blocks.{n}.{2 if has_attention else 1}.conv"] = (
                    f"up_blocks.{i}.upsamplers.0.conv", False)
            n += 1
    return table


def ldm_structure(keys) -> tuple[int, int, tuple[bool, ...]]:
    """(levels, layers per level, attention per level) of an LDM UNet, from its key names."""
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downsamplers = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    levels = len(downsamplers) + 1
    layers = (max(blocks, default=0) - len(downsamplers)) // levels
    firsts = [1 + i * (layers + 1) for i in range(levels)]  # first resnet block of each level
    attention = tuple(any(k.startswith(f"input_blocks.{n}.1.") for k in keys) for n in firsts)
    return levels, layers, attention


def _rename(state: dict[str, torch.Tensor], table: dict[str, tuple[str, bool]], resnet_names: dict[str, str]):
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        for cut in range(5, 0, -1):  # longest prefix first (`input_blocks.3.0.op` before `input_blocks.3.0`)
            prefix = ".".join(parts[:cut])
            if prefix in table:
                new_prefix, is_resnet = table[prefix]
                rest = ".".join(parts[cut:])
                if is_resnet:
                    sub = ".".join(rest.split(".")[:-1])
                    rest = rest.replace(sub, resnet_names.get(sub, sub), 1)
                out[f"{new_prefix}.{rest}"] = value
                break
        else:
            out[key] = value  # left as is: the strict loader reports it as unexpected
    return out


def unet_from_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM UNet keys (without `model.diffusion_model.`) -> our names."""
    return _rename(state, ldm_block_table(*ldm_structure(state)), LDM_RESNET)


def unet_to_ldm(state: dict[str, torch.Tensor], levels: int, layers: int,
                attention: tuple[bool, ...]) -> dict[str, torch.Tensor]:
    """Our spatial UNet keys -> LDM names (without prefix); the inverse of unet_from_ldm."""
    table = {ours: (ldm, is_resnet) for ldm, (ours, is_resnet) in ldm_block_table(levels, layers, attention).items()}
    return _rename(state, table, {v: k for k, v in LDM_RESNET.items()})


# diffusers MotionAdapter -> original AnimateDiff names, inside `motion_modules.N.`
DIFFUSERS_MOTION = [(r"(motion_modules\.\d+\.)", r"\1temporal_transformer."),
                    (r"\.attn1\.", ".attention_blocks.0."), (r"\.attn2\.", ".attention_blocks.1."),
                    (r"\.norm1\.", ".norms.0."), (r"\.norm2\.", ".norms.1."), (r"\.norm3\.", ".ff_norm.")]


def motion_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in DIFFUSERS_MOTION:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def motion_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace(".temporal_transformer.", ".")
        for ours, theirs in ((".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."),
                             (".norms.0.", ".norm1."), (".norms.1.", ".norm2."), (".ff_norm.", ".norm3.")):
            key = key.replace(ours, theirs)
        out[key] = value
    return out
