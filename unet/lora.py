"""LoRA: low-rank updates W' = W + multiplier * (alpha / rank) * up @ down on Linear and Conv2d layers.

A `LoRANetwork` holds one `LoRAModule` per adapted layer, named as kohya names them
(`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`), so its state dict *is* a
kohya file (`.lora_down.weight`, `.lora_up.weight`, `.alpha`), the layout of AnimateLCM's LoRA. It attaches
to the UNet with forward hooks (the UNet's own names and state dict stay untouched), or is merged
into the base weights for inference at no extra cost.
"""
from __future__ import annotations

import json
import math
import warnings

import torch
from torch import nn

from runtime.weights import CheckpointError, describe_checkpoint, read_metadata, read_state_dict, save_safetensors

# The LCM-LoRA / AnimateLCM target list: every attention, feed-forward, ResNet conv, time projection
# and resampling conv of the spatial UNet (LCM-LoRA's layer list; docs/sources.md).
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
PREFIX = "lora_unet_"


class LoRAModule(nn.Module):
    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        if isinstance(base, nn.Linear):
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):  # down keeps the base kernel, stride and padding; up is 1x1
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       bias=False)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA supports Linear and Conv2d layers, not {type(base).__name__}")
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)  # a new LoRA starts as no change
        self.multiplier = 1.0

    @property
    def rank(self) -> int:
        return self.lora_down.weight.shape[0]

    @property
    def scale(self) -> float:
        return self.multiplier * self.alpha.item() / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_up(self.lora_down(x)) * self.scale

    def delta_weight(self, shape: torch.Size) -> torch.Tensor:
        up, down = self.lora_up.weight.flatten(1).float(), self.lora_down.weight.flatten(1).float()
        return (up @ down).reshape(shape) * self.scale


def lora_targets(unet: nn.Module, targets=LCM_LORA_TARGETS, include_motion: bool = False) -> dict[str, nn.Module]:
    """Our UNet's layers to adapt, by kohya name (module path with '.' -> '_')."""
    found = {}
    for path, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or path.startswith("img_encoder."):
            continue
        if "motion_modules." in path and not include_motion:
            continue
        if any(path == t or path.endswith("." + t) for t in targets):
            found[PREFIX + path.replace(".", "_")] = module
    return found


class LoRANetwork(nn.Module):
    def __init__(self, unet: nn.Module, modules: dict[str, LoRAModule]):
        super().__init__()
        layers = {PREFIX + p.replace(".", "_"): m for p, m in unet.named_modules()}
        unknown = [name for name in modules if name not in layers]
        if unknown:
            raise CheckpointError(f"LoRA names layers this UNet does not have: {', '.join(unknown[:5])}"
                                  + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        for name, module in modules.items():
            self.add_module(name, module)
        self._bases = {name: layers[name] for name in modules}  # a plain dict: not our submodules
        self._hooks: list = []
        self.merged = False
        self.attach()

    @classmethod
    def create(cls, unet: nn.Module, rank: int, alpha: float | None = None, targets=LCM_LORA_TARGETS,
               include_motion: bool = False) -> "LoRANetwork":
        """A new, trainable LoRA (up weights zero, so the UNet is unchanged until trained)."""
        alpha = rank if alpha is None else alpha
        bases = lora_targets(unet, targets, include_motion)
        device = next(unet.parameters()).device
        return cls(unet, {n: LoRAModule(b, rank, alpha).to(device) for n, b in bases.items()})

    @classmethod
    def load(cls, unet: nn.Module, source, multiplier: float = 1.0) -> "LoRANetwork":
        """Read a kohya (`lora_unet_*`) or peft (`unet.*.lora_A`) LoRA file or state dict onto `unet`."""
        state = source if isinstance(source, dict) else read_state_dict(source)
        metadata = {} if isinstance(source, dict) else read_metadata(source)
        kohya = kohya_from_peft(state, metadata) if any(".lora_A." in k for k in state) else state
        text = [k for k in kohya if k.startswith("lora_te")]
        if text:
            warnings.warn(f"{len(text)} text-encoder LoRA tensors are not applied (UNet LoRA only).")
        unet_keys = {k: v for k, v in kohya.items() if k.startswith(PREFIX)}
        if not unet_keys:
            raise CheckpointError(f"{source if not isinstance(source, dict) else 'state dict'} is "
                                  f"{describe_checkpoint(state)}, not a UNet LoRA.")
        layers = {PREFIX + p.replace(".", "_"): m for p, m in unet.named_modules()}
        modules = {}
        for name in sorted({k.split(".")[0] for k in unet_keys}):
            down, up = unet_keys.get(f"{name}.lora_down.weight"), unet_keys.get(f"{name}.lora_up.weight")
            if down is None or up is None or name not in layers:
                problem = "has no layer of that name in this UNet" if name not in layers else "lacks up or down"
                raise CheckpointError(f"LoRA layer {name} {problem}.")
            alpha = unet_keys.get(f"{name}.alpha", torch.tensor(float(down.shape[0]))).item()
            module = LoRAModule(layers[name], down.shape[0], alpha)
            try:
                module.lora_down.weight.data.copy_(down)
                module.lora_up.weight.data.copy_(up)
            except RuntimeError as e:
                raise CheckpointError(f"LoRA layer {name} does not fit this UNet: {e}") from e
            module.multiplier = multiplier
            modules[name] = module
        extra = set(unet_keys) - {f"{n}.{s}" for n in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")}
        if extra:
            raise CheckpointError(f"LoRA file has tensors this loader does not understand: {sorted(extra)[:5]}")
        param = next(unet.parameters())
        return cls(unet, modules).to(device=param.device, dtype=param.dtype)

    def set_multiplier(self, multiplier: float) -> None:
        if self.merged:
            raise RuntimeError("unmerge() before changing the multiplier of a merged LoRA")
        for module in self.children():
            module.multiplier = multiplier

    def attach(self) -> None:
        """Add the LoRA outputs to the base layers' outputs (unmerged: for training)."""
        def hook(lora):
            return lambda layer, args, out: out + lora(args[0])
        self._hooks = [self._bases[n].register_forward_hook(hook(m)) for n, m in self.named_children()]

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the LoRA into the base weights: inference at the base model's cost."""
        if not self.merged:
            self.detach()
            for name, module in self.named_children():
                weight = self._bases[name].weight
                weight += module.delta_weight(weight.shape).to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for name, module in self.named_children():
                weight = self._bases[name].weight
                weight -= module.delta_weight(weight.shape).to(weight.dtype)
            self.merged = False
            self.attach()

    def file_state(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """What a kohya file holds, as AnimateLCM's LoRA: per layer `lora_down.weight` and `lora_up.weight`
        in `dtype`, and a 0-dim float32 `alpha`."""
        return {k: v.to(dtype) if k.endswith(".weight") else v.float() for k, v in self.state_dict().items()}

    def save(self, path, dtype: torch.dtype = torch.float16, metadata: dict | None = None) -> None:
        """Write a kohya-format safetensors file."""
        save_safetensors(self.file_state(dtype), path, metadata)


def kohya_from_peft(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """peft/diffusers names (`unet.<path>.lora_A.weight`) -> kohya names, with alpha.

    peft files keep alpha outside the tensors: in safetensors metadata (`lora_adapter_metadata`, a
    JSON of the peft config with keys like "unet.lora_alpha", as diffusers writes it) or nowhere, in
    which case alpha = rank (scale 1), as diffusers assumes.
    """
    packed = json.loads(metadata.get("lora_adapter_metadata", "{}")) if metadata else {}
    config = {k.removeprefix("unet."): v for k, v in packed.items() if not k.startswith("text_encoder")}
    out = {}
    for key, value in state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            out[key] = value
            continue
        path = key.split(".lora_")[0].removeprefix("unet.")
        name = PREFIX + path.replace(".", "_")
        out[f"{name}.lora_{'down' if '.lora_A.' in key else 'up'}.weight"] = value
        if ".lora_A." in key:
            rank = value.shape[0]
            alpha = config.get("alpha_pattern", {}).get(path, config.get("lora_alpha", rank))
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
