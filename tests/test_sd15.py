"""A whole tiny SD1.5 model saved in the single-file layout loads back exactly, hints included."""
import torch

from sd15 import load_sd15, save_sd15
from text import CLIPTextEncoder, TextEncoderConfig
from tiny import randomize
from unet.config import UNetConfig
from unet.model import UNet
from vae import AutoencoderKL, VAEConfig


def tiny_parts():
    torch.manual_seed(0)
    unet = randomize(UNet(UNetConfig.tiny()), 0)
    vae = randomize(AutoencoderKL(VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_groups=8)), 1)
    text = randomize(CLIPTextEncoder(TextEncoderConfig(width=32, layers=2, heads=4, mlp_width=64)), 2)
    return unet, vae, text


def test_save_then_load_gives_the_same_model(tmp_path):
    unet, vae, text = tiny_parts()
    save_sd15(tmp_path / "tiny.safetensors", unet, vae, text, metadata={"seed": "0"})
    model = load_sd15(tmp_path / "tiny.safetensors")  # no size arguments: the file's hints say
    assert model.unet.cfg == unet.cfg and model.vae.cfg == vae.cfg and model.text_encoder.config == text.config
    for ours, theirs in ((model.unet, unet), (model.vae, vae), (model.text_encoder, text)):
        for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), k
    states = model.encode_prompts(["a red circle moving left", ""])
    assert states.shape == (2, 77, 32)
    assert not torch.equal(states[0], states[1])
