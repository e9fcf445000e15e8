"""The Stable Diffusion VAE (AutoencoderKL) and its loaders."""
from .load import load_vae, read_vae_state, vae_from_ldm, vae_to_ldm
from .model import AutoencoderKL, DiagonalGaussian, VAEConfig

__all__ = ["AutoencoderKL", "DiagonalGaussian", "VAEConfig", "load_vae", "read_vae_state",
           "vae_from_ldm", "vae_to_ldm"]
