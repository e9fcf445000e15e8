"""Tiny seeded reference models (diffusers) and real-format files written from them, for tests."""
from __future__ import annotations

import torch

TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                 layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                 attention_head_dim=4, norm_num_groups=8)
TINY_HEADS = dict(attention_heads=4, motion_heads=4, norm_groups=8)


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every tensor (including zero-initialised outputs and unit norms) reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


class PerFrameGroupNorm(torch.nn.GroupNorm):
    """GroupNorm over each frame of a [B, C, F, H, W] tensor.

    The official AnimateDiff/AnimateLCM code (which trained the released weights) normalises the
    motion module's input per frame; diffusers' AnimateDiffTransformer3D normalises over all frames
    (a different function: up to ~0.2 apart on these tiny models). Our model follows the official
    code, so the reference gets this one norm made per-frame, nothing else.
    """

    def forward(self, x):
        if x.dim() != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        return super().forward(x.transpose(1, 2).flatten(0, 1)).view(b, f, c, h, w).transpose(1, 2)


def tiny_diffusers_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return randomize(UNet2DConditionModel(**{**TINY_UNET, **overrides}), seed)


def tiny_motion_adapter(seed: int = 1, mid: bool = True, max_len: int = 32, **overrides):
    from diffusers import MotionAdapter
    torch.manual_seed(seed)
    cfg = dict(block_out_channels=TINY_UNET["block_out_channels"], motion_layers_per_block=2,
               motion_num_attention_heads=4, motion_norm_num_groups=8, motion_max_seq_length=max_len,
               use_motion_mid_block=mid)
    adapter = MotionAdapter(**{**cfg, **overrides})
    pe = {k: v.clone() for k, v in adapter.state_dict().items() if k.endswith("pos_embed.pe")}
    randomize(adapter, seed)
    adapter.load_state_dict({**adapter.state_dict(), **pe})  # the position table is fixed, not learnt
    return adapter


def ldm_unet_file_state(unet_ref) -> dict[str, torch.Tensor]:
    """A diffusers UNet's tensors in SD1.5 single-file names, written with our inverse key map."""
    from unet.keymap import unet_to_ldm
    cfg = unet_ref.config
    attention = tuple(t.startswith("CrossAttn") for t in cfg.down_block_types)
    ldm = unet_to_ldm(unet_ref.state_dict(), len(cfg.block_out_channels), cfg.layers_per_block, attention)
    return {"model.diffusion_model." + k: v for k, v in ldm.items()}


def original_motion_file_state(adapter, pe_length: int | None) -> dict[str, torch.Tensor]:
    """A MotionAdapter's tensors in the published AnimateDiff layout (AnimateLCM: pe_length None)."""
    from unet.keymap import motion_from_diffusers
    state = motion_from_diffusers({k: v for k, v in adapter.state_dict().items() if "pos_embed" not in k})
    if pe_length:
        for k in [k for k in state if k.endswith("attention_blocks.0.to_q.weight")]:
            c = state[k].shape[0]
            for a in (0, 1):
                key = k.replace("attention_blocks.0.to_q.weight", f"attention_blocks.{a}.pos_encoder.pe")
                state[key] = _pe(pe_length, c)
    return state


def _pe(length: int, dim: int) -> torch.Tensor:
    import math
    pos = torch.arange(length).float()[:, None]
    div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2], pe[0, :, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")


def hf_clip_tokenizer(folder):
    """transformers' CLIPTokenizer on open_clip's bundled BPE data (no download)."""
    import gzip
    import json
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_reference_parts(seed: int = 0):
    """Random tiny diffusers/transformers parts of an AnimateDiff pipeline: unet2d, adapter, vae, text."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    vae = randomize(AutoencoderKL(**TINY_VAE), seed + 2, scale=0.05)
    text = randomize(CLIPTextModel(CLIPTextConfig(**TINY_TEXT)), seed + 3, scale=0.05)
    return tiny_diffusers_unet(seed), tiny_motion_adapter(seed + 1), vae, text


def sd15_file_state(unet2d, vae, text) -> dict[str, torch.Tensor]:
    """The three parts in the SD1.5 single-file layout, written with our inverse key maps."""
    from vae.load import vae_to_ldm
    state = ldm_unet_file_state(unet2d)
    state.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict()).items()})
    text_state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()}
    state.update({"cond_stage_model.transformer." + k: v for k, v in text_state.items()})
    return state


def write_training_files(folder, size: str = "tiny") -> None:
    """Random SD1.5-format weights (full size or tiny) for the scripts to load."""
    from sd15 import save_sd15
    from text import CLIPTextEncoder, TextEncoderConfig
    from unet.config import UNetConfig
    from unet.load import save_motion_module
    from unet.lora import LoRANetwork
    from unet.model import UNet
    from vae import AutoencoderKL, VAEConfig
    torch.manual_seed(0)
    if size == "sd15":
        cfg, vae_cfg, text_cfg = UNetConfig.sd15(), VAEConfig(), TextEncoderConfig()
    else:
        cfg = UNetConfig.tiny()
        vae_cfg = VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_groups=8)
        text_cfg = TextEncoderConfig(width=32, layers=2, heads=4, mlp_width=64)
    video_cfg = UNetConfig(**{**cfg.__dict__, "motion_modules": True, "motion_mid_block": True,
                              "motion_max_frames": 32})
    with torch.no_grad():
        unet = UNet(video_cfg)
        for p in unet.parameters():  # small random weights (zero-initialised outputs too); norms stay 1
            if p.dim() > 1:
                p.normal_(0, 0.02)
        save_sd15(folder / "sd15.safetensors", unet, AutoencoderKL(vae_cfg), CLIPTextEncoder(text_cfg))
        save_motion_module(unet, folder / "motion.safetensors", "animatediff")  # a teacher's, as AnimateDiff v2
        LoRANetwork.create(unet, 64 if size == "sd15" else 4, 8.0).save(folder / "lora.safetensors")


def write_clips(folder, count: int, frames: int, resolution: int) -> None:
    """Captioned clips of a moving square (and same-named control clips) as GIFs, and still images."""
    import numpy as np
    from PIL import Image
    from media.video import write_video
    for sub in ("clips", "controls", "images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        video = np.zeros((frames, resolution, resolution, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        control = np.zeros_like(video)
        side = resolution // 4
        for f in range(frames):
            x = (f * resolution // (2 * frames) + i * 7) % (resolution - side)
            video[f, side:2 * side, x:x + side] = 255
            control[f, side:2 * side, x:x + side] = 255
        write_video(video, folder / "clips" / f"clip{i}.gif", fps=8)
        write_video(control, folder / "controls" / f"clip{i}.gif", fps=8)
        (folder / "clips" / f"clip{i}.txt").write_text("a white square moving right")
        Image.fromarray(video[0]).save(folder / "images" / f"image{i}.png")
        (folder / "images" / f"image{i}.txt").write_text("a white square")
