"""A whole SD1.5 model (UNet, VAE, text encoder, tokenizer), loaded or saved in one go.

    model = load_sd15("v1-5-pruned-emaonly.safetensors", motion="AnimateLCM_sd15_t2v.ckpt",
                      loras=[("AnimateLCM_sd15_t2v_lora.safetensors", 0.8)])

A single file is read once and split between the three loaders. `save_sd15` writes the SD1.5
single-file layout (the keys of `v1-5-pruned-emaonly`), with architecture hints in its metadata so
that tiny models load back through the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from text import CLIPTextEncoder, Tokenizer, load_text_encoder, text_encoder_to_hf
from unet.load import load_unet, unet_hints, unet_state_to_ldm
from unet.lora import LoRANetwork
from unet.model import UNet
from vae import AutoencoderKL, load_vae
from vae.load import vae_to_ldm
from runtime.weights import HINTS_KEY, architecture_hints, read_state_dict, save_safetensors


@dataclass
class StableDiffusion:
    unet: UNet
    vae: AutoencoderKL
    text_encoder: CLIPTextEncoder
    tokenizer: Tokenizer
    controlnet: nn.Module | None = None  # unet.controlnet.ControlNet, steering the UNet with control images

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], clip_skip: int = 0) -> torch.Tensor:
        """Prompts -> text-token states [B, 77, D] in the UNet's dtype and device."""
        device = next(self.text_encoder.parameters()).device
        states = self.text_encoder(self.tokenizer(prompts).to(device), clip_skip=clip_skip)
        param = next(self.unet.parameters())
        return states.to(param.device, param.dtype)

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled VAE latents of training images [B, 3, H, W] or videos [B, 3, F, H, W] in [-1, 1]; each
        sample's posterior noise comes from its own generator."""
        latents = []
        for sample, generator in zip(pixels, generators):
            if sample.dim() == 4:  # a video [3, F, H, W]
                latents.append(self.vae.encode_video(sample[None], generator=generator))
            else:
                latents.append(self.vae.encode(sample[None]).sample(generator) * self.vae.cfg.scaling_factor)
        return torch.cat(latents)


def load_sd15(source, motion=None, loras=(), *, device="cpu", dtype: torch.dtype = torch.float32,
              vae_dtype: torch.dtype = torch.float32, **unet_args) -> StableDiffusion:
    """SD1.5 from a single file, a diffusers folder or a state dict; `motion` inflates it to video;
    `loras` is a list of (file, multiplier), merged into the UNet weights."""
    state = source
    if isinstance(source, (str, Path)) and Path(source).is_file():
        state = read_state_dict(source)  # one read for all three parts
        unet_args = {**{k: v for k, v in architecture_hints(source, "unet").items()}, **unet_args}
        vae_hints, text_hints = architecture_hints(source, "vae"), architecture_hints(source, "text_encoder")
    else:
        vae_hints, text_hints = {}, {}
    unet = load_unet(state, motion, device=device, **unet_args)
    for lora, multiplier in loras:
        LoRANetwork.load(unet, lora, multiplier).merge()
    return StableDiffusion(
        unet=unet.to(dtype).eval(),
        vae=load_vae(state, device=device, dtype=vae_dtype, **vae_hints),
        text_encoder=load_text_encoder(state, heads=text_hints.get("heads")).to(device),
        tokenizer=Tokenizer())


def sd15_file_state(unet: UNet, vae: AutoencoderKL, text_encoder: CLIPTextEncoder) -> dict[str, torch.Tensor]:
    """What an SD1.5 single file holds: the UNet's spatial part, the VAE and the text encoder in LDM names."""
    state = unet_state_to_ldm(unet)
    state.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict()).items()})
    state.update({"cond_stage_model.transformer." + k: v
                  for k, v in text_encoder_to_hf(text_encoder.state_dict()).items()})
    return state


def save_sd15(path, unet: UNet, vae: AutoencoderKL, text_encoder: CLIPTextEncoder,
              metadata: dict | None = None) -> None:
    """Write UNet (spatial part), VAE and text encoder as one SD1.5-layout safetensors file."""
    hints = {"unet": unet_hints(unet)["unet"],
             "vae": {"norm_groups": vae.cfg.norm_groups, "scaling_factor": vae.cfg.scaling_factor},
             "text_encoder": {"heads": text_encoder.config.heads}}
    save_safetensors(sd15_file_state(unet, vae, text_encoder), path, {**(metadata or {}), HINTS_KEY: hints})
