"""Build a UNet from real checkpoint files: SD1.5 (single file or diffusers folder) + motion module;
and write a UNet's parts back in those layouts.

    unet = load_unet("v1-5-pruned-emaonly.safetensors", motion="AnimateLCM_sd15_t2v.ckpt")

The architecture is read from tensor shapes; the motion module's layout (AnimateDiff v1/v2/v3,
AnimateLCM t2v/i2v) from its keys. Every key of both files is used (or known to be ignorable) and
every parameter is filled, or a CheckpointError says what does not fit. A written motion module has
exactly the keys of the official layout it imitates, and names that layout in its metadata.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from runtime.weights import (HINTS_KEY, CheckpointError, architecture_hints, describe_checkpoint, load_strict,
                     read_component, read_metadata, save_safetensors, source_name, strip_prefix)

from .config import MotionConfig, UNetConfig
from .keymap import motion_from_diffusers, unet_from_ldm, unet_to_ldm
from .model import UNet
from .motion import TemporalBlock, sinusoidal_positions

LDM_UNET_PREFIX = "model.diffusion_model."
# The official motion-module layouts, and the length of the position tables each file stores
# (AnimateLCM's store none: its code computes 64 positions).
MOTION_LAYOUTS = {"animatediff_v1": 24, "animatediff_v2": 32, "animatediff_v3": 32,
                  "animatelcm_t2v": None, "animatelcm_i2v": None}
LAYOUT_KEY = "layout"  # our motion-module files' metadata: which of MOTION_LAYOUTS the file is written in
POSITION_TABLE = re.compile(r"pos_(encoder|embed)\.(pe|pos_encoding)$")  # AnimateDiff, diffusers, AnimateLCM names


def read_sd15_unet(source) -> dict[str, torch.Tensor]:
    """Our-named UNet tensors from an SD1.5 single file, a diffusers folder, or a state dict."""
    state, name, _ = read_component(source, "unet")
    kind = describe_checkpoint(state)
    if "SDXL" in kind or "SD2" in kind:
        raise CheckpointError(f"{name} is {kind}.")
    if any(k.startswith(LDM_UNET_PREFIX) for k in state):
        return unet_from_ldm(strip_prefix(state, LDM_UNET_PREFIX))
    if "conv_in.weight" in state and any(k.startswith("down_blocks.") for k in state) \
            and not any("motion_modules" in k for k in state):
        return state  # diffusers names already
    if "input_blocks.0.0.weight" in state:
        return unet_from_ldm(state)
    raise CheckpointError(f"{name} is {kind}, not an SD1.5 UNet. "
                          "Pass an SD1.5 (or personalized SD1.5) checkpoint or diffusers folder.")


def read_motion_module(source) -> tuple[dict[str, torch.Tensor], MotionConfig]:
    """Our-named motion-module (and I2V image-encoder) tensors, and what the file is.

    `source`: an AnimateDiff/AnimateLCM file, a diffusers MotionAdapter folder, or a state dict.
    """
    state, _, _ = read_component(source, "motion_adapter")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any("motion_modules." in k for k in state):
        raise CheckpointError(f"{source_name(source)} is {describe_checkpoint(state)}, not a motion module. "
                              "Pass an AnimateDiff or AnimateLCM motion-module file with --motion.")
    if not any(".temporal_transformer." in k for k in state):
        state = motion_from_diffusers(state)  # diffusers MotionAdapter layout
    tables = {k: v for k, v in state.items() if POSITION_TABLE.search(k)}
    check_position_tables(tables, source_name(source))  # derived: checked, never loaded
    pe_length = next(iter(tables.values())).shape[-2] if tables else None
    state = {k: v for k, v in state.items() if k not in tables}
    mid = any(k.startswith("mid_block.motion_modules.") for k in state)
    image_encoder = any(k.startswith("img_encoder.") for k in state)
    motion = detect_motion_version(pe_length, mid, image_encoder)
    stated = stated_layout(source)
    if stated is not None and stated != motion.version:
        raise CheckpointError(f"{source_name(source)} says it is written in the {stated} layout, but its keys are "
                              f"{motion.version}'s: it was edited since, and what it holds is unclear.")
    return state, motion


def detect_motion_version(pe_length: int | None, mid: bool, image_encoder: bool) -> MotionConfig:
    """The layout (a MOTION_LAYOUTS name) of a motion module, by the rules ComfyUI-AnimateDiff-Evolved uses.

    AnimateLCM files store no position table (its code computes 64 positions); AnimateDiff v2 has a
    mid-block module; v3 has none and a 32-long table; v1 a 24-long one, and v1 alone was trained with
    GroupNorm over all frames.
    """
    if pe_length is None:
        name = "animatelcm_i2v" if image_encoder else "animatelcm_t2v"
        return MotionConfig(name, mid, 64, "per_frame", image_encoder)
    if mid:
        return MotionConfig("animatediff_v2", mid, pe_length, "per_frame", image_encoder)
    if pe_length == 32:
        return MotionConfig("animatediff_v3", mid, pe_length, "per_frame", image_encoder)
    return MotionConfig("animatediff_v1", mid, pe_length, "joint", image_encoder)


def check_position_tables(tables: dict[str, torch.Tensor], name: str) -> None:
    """Stored position tables must hold the sinusoid our motion modules compute (a learnt table would
    mean another model). Half-precision files round it, hence the tolerance."""
    for key, table in tables.items():
        if table.is_meta:  # a key/shape manifest: no values to check
            continue
        expected = sinusoidal_positions(table.shape[-2], table.shape[-1])
        error = (table.float().reshape(expected.shape) - expected).abs().max().item()
        if error > 1e-2:
            raise CheckpointError(f"{name}: the position table {key} is not the fixed sinusoid of AnimateDiff and "
                                  f"AnimateLCM (off by up to {error:.3g}); this motion module is another model.")


def stated_layout(source) -> str | None:
    """The layout our own motion-module files name in their metadata (None for other sources)."""
    if not isinstance(source, (str, Path)) or not Path(source).is_file():
        return None
    return read_metadata(source).get(LAYOUT_KEY)


def load_unet(sd15, motion=None, *, attention_heads: int | None = None, motion_heads: int | None = None,
              norm_groups: int | None = None, motion_max_frames: int | None = None, frame_norm: str | None = None,
              dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> UNet:
    """An SD1.5 UNet from `sd15` (file, folder or state dict), inflated with `motion` if given.

    Head counts and GroupNorm groups cannot be read from shapes: they come from the arguments, else
    from the files' architecture hints (our own saved files carry them), else SD1.5's 8, 8 and 32.
    `frame_norm` overrides the motion version's spatial GroupNorm mode ("per_frame"/"joint").
    """
    hints = {**diffusers_config_hints(sd15, "unet"), **architecture_hints(sd15, "unet"),
             **diffusers_config_hints(motion, "motion_adapter"), **architecture_hints(motion, "motion")}
    given = dict(attention_heads=attention_heads, motion_heads=motion_heads, norm_groups=norm_groups)
    shape_free = {k: v if v is not None else hints.get(k, UNetConfig.__dataclass_fields__[k].default)
                  for k, v in given.items()}
    state = read_sd15_unet(sd15)
    try:
        cfg = UNetConfig.from_state_dict(state, **shape_free)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source_name(sd15)} does not look like a complete SD1.5 UNet ({e}).") from e
    if any(k.startswith("img_encoder.") or "motion_modules." in k for k in state):
        raise CheckpointError(f"{source_name(sd15)} mixes motion-module keys into the UNet file; pass the "
                              "motion module as a separate file.")
    if motion is not None:
        motion_state, motion_cfg = read_motion_module(motion)
        cfg = cfg.with_motion(motion_cfg)
        state = {**state, **motion_state}
    motion_max_frames = motion_max_frames or hints.get("motion_max_frames")  # our files record their window
    frame_norm = frame_norm or hints.get("frame_norm")  # ... and their frame norm, which a layout may not show
    overrides = {k: v for k, v in (("motion_max_frames", motion_max_frames), ("frame_norm", frame_norm)) if v}
    cfg = replace(cfg, **overrides)
    with torch.device("meta"):
        unet = UNet(cfg)
    unet = unet.to_empty(device=device)
    what = f"{source_name(sd15)}" + (f" + {source_name(motion)}" if motion is not None else "")
    load_strict(unet, state, what)
    return unet.to(dtype) if dtype is not None else unet


def add_motion_modules(unet: UNet, mid_block: bool = True, max_frames: int = 32) -> UNet:
    """A video UNet with `unet`'s spatial weights and new motion modules (AnimateDiff v2 layout).

    The new modules' output projections are zero, so the video model starts as the image model run
    on each frame: the starting point of AnimateDiff's motion training.
    """
    cfg = replace(unet.cfg, motion_modules=True, motion_mid_block=mid_block, motion_max_frames=max_frames)
    param = next(unet.parameters())
    # New modules are drawn on the CPU (the same draws for every device); a UNet of shapes only stays meta.
    with torch.device("meta" if param.is_meta else "cpu"):
        video = UNet(cfg)
    video = video.to(param.device, param.dtype)
    missing, unexpected = video.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all("motion_modules." in k for k in missing), (missing, unexpected)
    return video


def diffusers_config_hints(source, component: str) -> dict:
    """Head counts and norm groups from a diffusers folder's config.json ({} for anything else)."""
    if not isinstance(source, (str, Path)) or not Path(source).is_dir():
        return {}
    folder = Path(source) / component if (Path(source) / component).is_dir() else Path(source)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    # SD1.5 configs name the head count `attention_head_dim` (a diffusers naming quirk).
    heads = config.get("attention_head_dim") if component == "unet" else config.get("motion_num_attention_heads")
    groups = config.get("norm_num_groups" if component == "unet" else "motion_norm_num_groups")
    names = ("attention_heads" if component == "unet" else "motion_heads", "norm_groups")
    return {k: v for k, v in zip(names, (heads, groups)) if isinstance(v, int)}


def unet_state_to_ldm(unet: UNet) -> dict[str, torch.Tensor]:
    """Spatial UNet tensors in SD1.5 single-file names (with `model.diffusion_model.`)."""
    cfg = unet.cfg
    spatial = {k: v for k, v in unet.state_dict().items() if "motion_modules." not in k
               and not k.startswith("img_encoder.")}
    ldm = unet_to_ldm(spatial, len(cfg.block_out_channels), cfg.layers_per_block, cfg.attention_levels)
    return {LDM_UNET_PREFIX + k: v for k, v in ldm.items()}


def motion_state(unet: UNet) -> dict[str, torch.Tensor]:
    """The motion-module (and image-encoder) tensors in the original AnimateDiff names."""
    return {k: v for k, v in unet.state_dict().items() if "motion_modules." in k or k.startswith("img_encoder.")}


def motion_layout(cfg: UNetConfig, family: str) -> str:
    """The official layout (a MOTION_LAYOUTS name) that motion modules of this structure are written in:
    `family` "animatediff" for a teacher's (AnimateDiff's training), "animatelcm" for a consistency model's."""
    if family == "animatelcm":
        return "animatelcm_i2v" if cfg.image_encoder else "animatelcm_t2v"
    if family != "animatediff":
        raise ValueError(f"family must be animatediff or animatelcm, got {family!r}")
    if cfg.motion_mid_block:
        return "animatediff_v2"
    return "animatediff_v1" if cfg.frame_norm == "joint" else "animatediff_v3"


def position_tables(unet: UNet, length: int) -> dict[str, torch.Tensor]:
    """AnimateDiff's stored position tables, [1, length, C] per temporal attention: derived values that
    its files carry (and tools read the layout from), never weights."""
    tables = {}
    for name, module in unet.named_modules():
        if isinstance(module, TemporalBlock):
            table = sinusoidal_positions(length, module.ff_norm.normalized_shape[0])[None]
            for i in range(len(module.attention_blocks)):  # one copy each: a file holds no shared tensors
                tables[f"{name}.attention_blocks.{i}.pos_encoder.pe"] = table.clone()
    return tables


def motion_file_state(unet: UNet, layout: str) -> dict[str, torch.Tensor]:
    """What a motion-module file in `layout` holds: the motion modules (and I2V image encoder), plus
    the position tables where that layout stores them."""
    length = MOTION_LAYOUTS[layout]
    return {**motion_state(unet), **(position_tables(unet, length) if length else {})}


def save_motion_module(unet: UNet, path, family: str, metadata: dict | None = None) -> None:
    """Write the motion modules (and I2V image encoder) as a safetensors file with the keys of the
    official layout of `family` ("animatediff" or "animatelcm", see motion_layout), named in its metadata."""
    layout = motion_layout(unet.cfg, family)
    save_safetensors(motion_file_state(unet, layout), path,
                     {**(metadata or {}), LAYOUT_KEY: layout, HINTS_KEY: unet_hints(unet)})


def unet_hints(unet: UNet) -> dict:
    """Architecture hints for a saved file: what a loader cannot read from the shapes."""
    cfg = unet.cfg
    return {"unet": {"attention_heads": cfg.attention_heads, "motion_heads": cfg.motion_heads,
                     "norm_groups": cfg.norm_groups},
            "motion": {"motion_heads": cfg.motion_heads, "norm_groups": cfg.norm_groups,
                       "motion_max_frames": cfg.motion_max_frames, "frame_norm": cfg.frame_norm}}
