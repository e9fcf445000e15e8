"""The Stable Diffusion VAE (AutoencoderKL): images [B, 3, H, W] in [-1, 1] <-> latents [B, 4, H/8, W/8].

Module names follow diffusers' AutoencoderKL state dict, so a diffusers `vae/` folder loads by
identity and the LDM single file through the short rule table in `vae/load.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.weights import CheckpointError

EPS = 1e-6  # every GroupNorm of the SD VAE


@dataclass
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_groups: int = 32
    scaling_factor: float = 0.18215  # SD1.5; latents fed to the UNet are posterior samples times this

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], norm_groups: int = 32,
                        scaling_factor: float = 0.18215) -> "VAEConfig":
        """Read channels, levels, layers and latent channels from the tensor shapes (our names)."""
        def shape(key):
            if key not in state:
                raise CheckpointError(f"the VAE weights lack {key}; is this a complete VAE?")
            return state[key].shape

        channels = [shape("encoder.down_blocks.0.resnets.0.conv1.weight")[0]]
        while f"encoder.down_blocks.{len(channels)}.resnets.0.conv1.weight" in state:
            channels.append(state[f"encoder.down_blocks.{len(channels)}.resnets.0.conv1.weight"].shape[0])
        layers = 0
        while f"encoder.down_blocks.0.resnets.{layers}.conv1.weight" in state:
            layers += 1
        return cls(in_channels=shape("encoder.conv_in.weight")[1],
                   latent_channels=shape("decoder.conv_in.weight")[1],
                   block_out_channels=tuple(channels), layers_per_block=layers,
                   norm_groups=norm_groups, scaling_factor=scaling_factor)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a 1x1 shortcut when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, H*W, C]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, H*W, C]
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        # Asymmetric padding (right and bottom only), as in the original LDM code.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResNet blocks, then an optional down- or upsampler."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resample = resample
        self.resnets = nn.ModuleList([ResnetBlock(c_in if j == 0 else c_out, c_out, groups)
                                      for j in range(layers)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(c_out)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(c_out)])

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.resample == "down":
            x = self.downsamplers[0](x)
        elif self.resample == "up":
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Level(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, "down" if i < n - 1 else None)
            for i in range(n)])
        self.mid_block = MidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):  # [B, 3, H, W] -> [B, 2*latent, H/2^(n-1), W/2^(n-1)]
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels[::-1], cfg.norm_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g)
        # Up levels run from the deepest (widest) to the image resolution, one more layer than down.
        self.up_blocks = nn.ModuleList([
            Level(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, "up" if i < n - 1 else None)
            for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z):  # [B, latent, h, w] -> [B, 3, h*2^(n-1), w*2^(n-1)]
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) over latents, from [B, 2*latent, h, w] moments."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images [B, 3, H, W] in [-1, 1] -> posterior over unscaled latents [B, 4, H/8, W/8]."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x.to(self.dtype))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [B, 4, h, w] -> images [B, 3, 8h, 8w], roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z.to(self.dtype)))

    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None,
                     sample: bool = True, chunk_frames: int = 8) -> torch.Tensor:
        """Videos [B, 3, F, H, W] -> scaled latents [B, 4, F, H/8, W/8] (the UNet's input space).

        Frames are encoded `chunk_frames` at a time; the noise is drawn once for the whole video, so
        the result does not depend on the chunk size.
        """
        b, _, f, _, _ = frames.shape
        images = frames.transpose(1, 2).flatten(0, 1)  # [B*F, 3, H, W]
        moments = torch.cat([self.quant_conv(self.encoder(chunk.to(self.dtype)))
                             for chunk in images.split(chunk_frames)])
        posterior = DiagonalGaussian(moments)
        z = posterior.sample(generator) if sample else posterior.mode()
        z = z * self.cfg.scaling_factor
        return z.unflatten(0, (b, f)).transpose(1, 2)  # [B, 4, F, h, w]

    def decode_video(self, latents: torch.Tensor, chunk_frames: int = 8) -> torch.Tensor:
        """Scaled latents [B, 4, F, h, w] -> videos [B, 3, F, 8h, 8w], decoding `chunk_frames` at a time."""
        b, _, f, _, _ = latents.shape
        z = latents.transpose(1, 2).flatten(0, 1) / self.cfg.scaling_factor  # [B*F, 4, h, w]
        images = torch.cat([self.decode(chunk) for chunk in z.split(chunk_frames)])
        return images.unflatten(0, (b, f)).transpose(1, 2)  # [B, 3, F, H, W]
