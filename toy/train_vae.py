"""Train the toy world's VAE: our `vae.AutoencoderKL` at a small size, from scratch, on frames of the world.

The loss is SD's first-stage objective without its GAN and LPIPS terms: L1 + MSE reconstruction of
a posterior sample, plus a small KL to N(0, I) that keeps the latent space smooth. The scaling factor
is then measured (1 / std of the latents), as Rombach et al. did for SD (0.18215), and travels in
the exported file's hints.

    python -m toy.train_vae --out runs/toy/vae.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

import numpy as np
import torch
from tqdm import tqdm

from runtime import cli
from toy.world import SEEN, sample_videos
from vae import AutoencoderKL, VAEConfig

TOY_VAE = VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, norm_groups=8)  # 32x32 -> 4x8x8


def frames_batch(batch: int, seed: int, frames: int, resolution: int) -> torch.Tensor:
    """Random frames of fresh clips, [B, 3, H, W] in [-1, 1]."""
    videos, _, _ = sample_videos(batch, seed, SEEN, frames, resolution)
    pick = np.random.default_rng(seed).integers(frames, size=batch)
    images = torch.from_numpy(videos[np.arange(batch), pick]).permute(0, 3, 1, 2).float()
    return images / 127.5 - 1


def train_vae(steps: int = 1500, batch: int = 32, lr: float = 1e-3, kl_weight: float = 1e-5,
              frames: int = 8, resolution: int = 32, seed: int = 0, device: str = "cpu",
              progress: bool = True) -> tuple[AutoencoderKL, dict]:
    """A trained VAE with its scaling factor set, and {"psnr": held-out reconstruction PSNR in dB}."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(TOY_VAE).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="toy VAE", disable=not progress)
    for step in bar:
        x = frames_batch(batch, 10_000 + seed * steps + step, frames, resolution).to(device)
        posterior = vae.encode(x)
        recon = vae.decode(posterior.sample())
        kl = 0.5 * (posterior.mean.square() + posterior.std.square() - 1 - posterior.logvar).sum((1, 2, 3)).mean()
        loss = (recon - x).abs().mean() + (recon - x).square().mean() + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.1f}")
    vae.eval()
    with torch.no_grad():  # the scaling factor: unit-variance latents for the UNet, as SD's 0.18215
        x = frames_batch(256, 99_999, frames, resolution).to(device)
        posterior = vae.encode(x)
        vae.cfg.scaling_factor = float(1 / posterior.sample(torch.Generator(device).manual_seed(0)).std())
        mse = (vae.decode(posterior.mean).clamp(-1, 1) - x).square().mean()
        psnr = float(10 * torch.log10(4 / mse))
    return vae, {"psnr": psnr, "scaling_factor": vae.cfg.scaling_factor}


def finetune_decoder(vae: AutoencoderKL, folders: list[Path], steps: int, batch: int = 32, lr: float = 1e-3,
                     size: int = 32, seed: int = 0, device: str = "cpu", progress: bool = True) -> AutoencoderKL:
    """The VAE's decoder fine-tuned on captioned stills (an equal share of each folder in every batch) with
    the reconstruction loss; the encoder, hence the latent space every other model works in, is unchanged.

    The toy VAE saw only filled shapes: its decoder draws an outline's latents as a filled shape, though
    the latents tell the two apart (docs/toy-world.md, personalization). A personalized checkpoint ships
    its own VAE; SD's ft-MSE VAE was made this way, by fine-tuning the decoder alone."""
    from media.data import ImageCaptionDataset
    sets = [ImageCaptionDataset(folder, size=size) for folder in folders]
    draws = torch.Generator().manual_seed(seed)
    vae = vae.to(device).train().requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    bar = tqdm(range(steps), desc="VAE decoder", disable=not progress)
    for step in bar:
        x = torch.stack([dataset[int(i)]["pixels"] for dataset in sets
                         for i in torch.randint(len(dataset), (batch // len(sets),), generator=draws)]).to(device)
        with torch.no_grad():
            z = vae.encode(x).sample(torch.Generator(device).manual_seed(seed * 1_000_003 + step))
        recon = vae.decode(z)
        loss = (recon - x).abs().mean() + (recon - x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return vae.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="where to write the VAE's state (safetensors)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from runtime.weights import save_safetensors
    vae, stats = train_vae(args.steps, args.batch, seed=args.seed, device=args.device)
    save_safetensors(vae.state_dict(), args.out, {"scaling_factor": str(stats["scaling_factor"])})
    print(f"wrote {args.out}: reconstruction PSNR {stats['psnr']:.1f} dB, scaling factor "
          f"{stats['scaling_factor']:.4f}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
