"""Build the VAE from real files: an SD1.5 single file, a diffusers folder, or a standalone VAE.

    vae = load_vae("v1-5-pruned-emaonly.safetensors")          # first_stage_model.* keys
    vae = load_vae("stable-diffusion-v1-5/")                    # pipeline root or its vae/ folder
    vae = load_vae("vae-ft-mse-840000-ema-pruned.safetensors")  # standalone, LDM or diffusers names

Our module names are diffusers'; LDM (CompVis) names differ by the rule table below. The architecture
is read from tensor shapes, every tensor is used, and a wrong file raises CheckpointError.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from runtime.weights import (CheckpointError, architecture_hints, describe_checkpoint, load_strict, read_component, source_name,
                     strip_prefix)

from .model import AutoencoderKL, VAEConfig

LDM_VAE_PREFIX = "first_stage_model."
IGNORED_PREFIXES = ("loss.", "model_ema.")  # training-only tensors of standalone LDM VAE files

# (ours, LDM) block prefixes. {e} is encoder/decoder; {i}, {j} are indices; the decoder's level
# order is reversed in LDM: {u} = levels - 1 - {i}.
BLOCK_RULES = [
    ("encoder.down_blocks.{i}.resnets.{j}.", "encoder.down.{i}.block.{j}."),
    ("encoder.down_blocks.{i}.downsamplers.0.", "encoder.down.{i}.downsample."),
    ("decoder.up_blocks.{i}.resnets.{j}.", "decoder.up.{u}.block.{j}."),
    ("decoder.up_blocks.{i}.upsamplers.0.", "decoder.up.{u}.upsample."),
    ("{e}.mid_block.resnets.0.", "{e}.mid.block_1."),
    ("{e}.mid_block.resnets.1.", "{e}.mid.block_2."),
    ("{e}.mid_block.attentions.0.", "{e}.mid.attn_1."),
    ("{e}.conv_norm_out.", "{e}.norm_out."),
]
# (ours, LDM) names of the module inside a block, before ".weight"/".bias".
MODULE_RULES = [
    ("conv_shortcut", "nin_shortcut"),
    ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"),
]
# Attention names of diffusers saves from before 0.14 (to_out.0 was proj_attn).
OLD_DIFFUSERS_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
OLD_ATTENTION_NAME = re.compile(r"(mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.")
ATTENTION_1X1 = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")  # 1x1 convs in LDM, Linear in ours


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in (("e", "encoder|decoder"), ("i", r"\d+"), ("j", r"\d+"), ("u", r"\d+")):
        pattern = pattern.replace(re.escape("{%s}" % name), f"(?P<{name}>{group})")
    return re.compile(pattern)


TO_LDM = [(_compile(ours), ldm) for ours, ldm in BLOCK_RULES]
FROM_LDM = [(_compile(ldm), ours) for ours, ldm in BLOCK_RULES]


def _levels(keys, pattern: str) -> int:
    return 1 + max((int(m.group(1)) for k in keys if (m := re.match(pattern, k))), default=-1)


def _rename(key: str, rules, modules: dict[str, str], levels: int) -> str:
    """Apply the first matching block rule, then rename the module inside the block."""
    for pattern, target in rules:
        m = pattern.match(key)
        if m is None:
            continue
        g = m.groupdict()
        if "i" in g and "u" not in g:
            g["u"] = levels - 1 - int(g["i"])
        elif "u" in g:
            g["i"] = levels - 1 - int(g["u"])
        module, _, param = key[m.end():].rpartition(".")
        module = modules.get(module, module)
        return target.format(**g) + (f"{module}." if module else "") + param
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def vae_from_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM VAE names (without `first_stage_model.`) -> ours; 1x1-conv attention weights squeezed."""
    levels = _levels(state, r"decoder\.up\.(\d+)\.")
    modules = {ldm: ours for ours, ldm in MODULE_RULES}
    out = {}
    for key, value in state.items():
        if ATTENTION_1X1.search(key) and value.ndim > 2:
            value = value.flatten(1)  # [C, C, 1, 1] (or [C, C, 1]) -> [C, C]
        out[_rename(key, FROM_LDM, modules, levels)] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (or diffusers', old attention names included) VAE names -> LDM; attention weights 1x1 convs."""
    state = normalize_diffusers(state)
    levels = _levels(state, r"decoder\.up_blocks\.(\d+)\.")
    modules = dict(MODULE_RULES)
    out = {}
    for key, value in state.items():
        key = _rename(key, TO_LDM, modules, levels)
        if ATTENTION_1X1.search(key) and value.ndim == 2:
            value = value[:, :, None, None]  # [C, C] -> [C, C, 1, 1]
        out[key] = value
    return out


def normalize_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the legacy diffusers attention names (query/key/value/proj_attn) to the current ones."""
    def rename(m: re.Match) -> str:
        return m.group(1) + OLD_DIFFUSERS_ATTENTION[m.group(2)] + "."
    return {OLD_ATTENTION_NAME.sub(rename, k): v for k, v in state.items()}


def read_vae_state(source) -> dict[str, torch.Tensor]:
    """Our-named VAE tensors from a single file, a diffusers folder, a standalone VAE, or a state dict."""
    state, _, _ = read_component(source, "vae")
    if "SDXL" in describe_checkpoint(state):  # same VAE shapes, other latent scale
        raise CheckpointError(f"{source_name(source)} is {describe_checkpoint(state)}; its VAE uses another "
                              "latent scaling. Pass an SD1.5 checkpoint or VAE.")
    if any(k.startswith(LDM_VAE_PREFIX) for k in state):
        state = strip_prefix(state, LDM_VAE_PREFIX)
    else:
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        return vae_from_ldm(state)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        return normalize_diffusers(state)
    if any(k.startswith("model.diffusion_model.") for k in state):
        raise CheckpointError(f"{source_name(source)} is an SD1.5-style single file without VAE weights "
                              "(no first_stage_model.* keys). Pass a VAE file or a diffusers folder.")
    raise CheckpointError(f"{source_name(source)} is {describe_checkpoint(state)}, not a VAE. Pass an SD1.5 "
                          "checkpoint, a diffusers folder, or a VAE file such as vae-ft-mse-840000.")


def diffusers_config_hints(source) -> dict:
    """GroupNorm groups and latent scaling from a diffusers folder's vae/config.json ({} for anything else)."""
    if not isinstance(source, (str, Path)) or not Path(source).is_dir():
        return {}
    folder = Path(source) / "vae" if (Path(source) / "vae").is_dir() else Path(source)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    names = {"norm_groups": "norm_num_groups", "scaling_factor": "scaling_factor"}
    return {ours: config[theirs] for ours, theirs in names.items() if isinstance(config.get(theirs), (int, float))}


def load_vae(source, *, norm_groups: int | None = None, scaling_factor: float | None = None,
             dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> AutoencoderKL:
    """An AutoencoderKL from `source` (file, folder or state dict), its shape read from the tensors.

    GroupNorm groups and the latent scaling factor cannot be read from shapes: they come from the
    arguments, else a diffusers folder's config.json or the file's architecture hints (our own saved
    files carry them), else SD1.5's.
    """
    hints = {**diffusers_config_hints(source), **architecture_hints(source, "vae")}
    norm_groups = norm_groups or hints.get("norm_groups", 32)
    scaling_factor = scaling_factor or hints.get("scaling_factor", 0.18215)
    state = read_vae_state(source)
    try:
        cfg = VAEConfig.from_state_dict(state, norm_groups=norm_groups, scaling_factor=scaling_factor)
    except CheckpointError as e:
        raise CheckpointError(f"{source_name(source)}: {e}") from e
    try:
        with torch.device("meta"):
            vae = AutoencoderKL(cfg)
    except ValueError as e:  # GroupNorm: groups that do not divide the channels
        raise CheckpointError(f"{source_name(source)}: no VAE with {norm_groups} GroupNorm groups fits its "
                              f"channels {cfg.block_out_channels} ({e})") from e
    vae = vae.to_empty(device=device)
    load_strict(vae, state, f"VAE from {source_name(source)}")
    return (vae.to(dtype) if dtype is not None else vae).eval()
