"""Loading the SD1.5 text encoder from the files it is published in.

Published files use transformers' CLIPTextModel names:
  SD1.5 single file      cond_stage_model.transformer.text_model.<name>
  diffusers folder       text_encoder/model.safetensors: text_model.<name>
  transformers >= 5      <name> (it drops text_model. when saving)
Our names are open_clip's. The mapping is the rule table below, plus one concatenation: the separate
q/k/v projections are MultiheadAttention's single in_proj. `embeddings.position_ids` is ignored
(an old buffer, often stored with corrupt values); positions are always 0..76.
"""
from __future__ import annotations

import json
import re

import torch

from runtime.weights import CheckpointError, architecture_hints, describe_checkpoint, load_strict, read_component, strip_prefix

from .encoder import CLIPTextEncoder, TextEncoderConfig

SINGLE_FILE_PREFIX = "cond_stage_model.transformer."
HF_PREFIX = "text_model."
IGNORED = ("embeddings.position_ids",)

# HF name (after text_model.) -> our name; {i} is a layer index, {p} is weight or bias.
RULES = [
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.{p}", "ln_final.{p}"),
    ("encoder.layers.{i}.layer_norm1.{p}", "transformer.resblocks.{i}.ln_1.{p}"),
    ("encoder.layers.{i}.layer_norm2.{p}", "transformer.resblocks.{i}.ln_2.{p}"),
    ("encoder.layers.{i}.mlp.fc1.{p}", "transformer.resblocks.{i}.mlp.c_fc.{p}"),
    ("encoder.layers.{i}.mlp.fc2.{p}", "transformer.resblocks.{i}.mlp.c_proj.{p}"),
    ("encoder.layers.{i}.self_attn.out_proj.{p}", "transformer.resblocks.{i}.attn.out_proj.{p}"),
]
HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
OUR_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")

# Widths of CLIP text towers that share these names but are not SD1.5's.
NOT_SD15_WIDTHS = {1024: "the OpenCLIP ViT-H text encoder of SD2.x",
                   1280: "the OpenCLIP ViT-bigG text encoder of SDXL"}


def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(regex)


_FROM_HF = [(_pattern(hf), ours) for hf, ours in RULES]
_TO_HF = [(_pattern(ours), hf) for hf, ours in RULES]


def _rename(name: str, table) -> str | None:
    for pattern, template in table:
        m = pattern.fullmatch(name)
        if m:
            return template.format(**m.groupdict())
    return None


def text_encoder_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel names (with or without text_model.) -> ours.

    Keys no rule knows are kept unchanged, so that strict loading reports them as unexpected.
    """
    out, qkv = {}, {}
    for name, tensor in state.items():
        short = name.removeprefix(HF_PREFIX)
        if short in IGNORED:
            continue
        m = HF_QKV.fullmatch(short)
        if m:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = tensor
            continue
        out[_rename(short, _FROM_HF) or name] = tensor
    for (layer, kind), parts in sorted(qkv.items()):
        where = f"text encoder layer {layer} self_attn {kind}"
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"{where}: found projections {sorted(parts)}, need q, k and v")
        shapes = {c: tuple(t.shape) for c, t in parts.items()}
        if len(set(shapes.values())) != 1:
            raise CheckpointError(f"{where}: q/k/v shapes differ: {shapes}")
        # MultiheadAttention stacks the projections as [q; k; v] along the output dimension.
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def text_encoder_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> HF names with the text_model. prefix (prepend cond_stage_model.transformer.
    for an SD1.5 single file)."""
    out = {}
    for name, tensor in state.items():
        m = OUR_IN_PROJ.fullmatch(name)
        if m:
            for c, part in zip("qkv", tensor.chunk(3)):
                out[f"{HF_PREFIX}encoder.layers.{m[1]}.self_attn.{c}_proj.{m[2]}"] = part
            continue
        hf = _rename(name, _TO_HF)
        if hf is None:
            raise ValueError(f"{name!r} is not a text encoder tensor name")
        out[HF_PREFIX + hf] = tensor
    return out


def load_text_encoder(source, heads: int | None = None,
                      dtype: torch.dtype = torch.float32) -> CLIPTextEncoder:
    """The SD1.5 text encoder from an SD1.5 single file, a diffusers pipeline folder or its
    text_encoder folder, a standalone text-encoder file, or a state dict (HF or our names).

    `heads` cannot be read from weight shapes: None means the folder's config.json, else our files'
    architecture hints, else width // 64.
    """
    state, what, hf_config = _read(source)
    ours = text_encoder_state(state, what)
    heads = heads or hf_config.get("num_attention_heads") or architecture_hints(source, "text_encoder").get("heads")
    try:
        config = TextEncoderConfig.from_state_dict(
            ours, heads=heads, layer_norm_eps=hf_config.get("layer_norm_eps", 1e-5))
    except KeyError as e:
        raise CheckpointError(f"{what}: the text encoder has no {e.args[0]} tensor "
                              f"(it looks like {describe_checkpoint(state)})") from e
    if config.width in NOT_SD15_WIDTHS:
        raise CheckpointError(f"{what}: a {config.width}-wide text encoder is "
                              f"{NOT_SD15_WIDTHS[config.width]}, not SD1.5's CLIP ViT-L/14 (768)")
    with torch.device("meta"):  # no random init: every tensor is filled from the file below
        model = CLIPTextEncoder(config).to(dtype)
    model.to_empty(device="cpu")
    load_strict(model, ours, f"{what} (text encoder)")
    return model.eval()


def _read(source) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state dict, description for errors, transformers config.json or {})."""
    state, what, folder = read_component(source, "text_encoder")
    config_file = folder / "config.json" if folder else None
    config = json.loads(config_file.read_text()) if config_file and config_file.exists() else {}
    act = config.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise CheckpointError(f"{config_file}: hidden_act is {act!r}; SD1.5's CLIP ViT-L/14 uses "
                              "quick_gelu (this is probably an SD2.x text encoder)")
    return state, what, config


def text_encoder_state(state: dict[str, torch.Tensor],
                       what: str = "the state dict") -> dict[str, torch.Tensor]:
    """The text encoder's tensors, in our names, from an SD1.5 single file's state dict, a
    text-encoder state dict in HF names (prefixed or not) or one in our names."""
    if any(k.startswith(SINGLE_FILE_PREFIX) for k in state):
        sub = strip_prefix(state, SINGLE_FILE_PREFIX)  # a single file: the rest is UNet and VAE
    else:
        sub = state  # a text-encoder file: every key must be used
    if "token_embedding.weight" in sub and "positional_embedding" in sub:
        return dict(sub)  # already our names
    if not any(k.removeprefix(HF_PREFIX) == "embeddings.token_embedding.weight" for k in sub):
        raise CheckpointError(f"{what} holds no SD1.5 CLIP text encoder; it looks like "
                              f"{describe_checkpoint(state)}.")
    return text_encoder_from_hf(sub)
