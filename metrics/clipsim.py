"""CLIPSIM (Wu et al. 2021, as AnimateLCM reports it): 100 x cosine similarity between each frame and
its prompt in CLIP space, averaged over the frames of a video and then over videos.

The paper uses CLIP ViT-H/14 trained on LAION-2B (`CLIP-ViT-H-14-laion2B-s32B-b79K`, docs/sources.md)
and its image-text logit, which is 100 x cosine (that model's logit scale is 100). Here open_clip
builds any of its architectures by name and loads the weights from a local file, never downloading.
Frames are prepared by open_clip's own evaluation transform for that model (ViT-H/14: bicubic resize
of the short side to 224, centre crop, CLIP mean/std), the same steps as the transformers
CLIPProcessor that AnimateLCM's clip_score.py calls.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runtime.cli import UserError


class CLIPScorer:
    """open_clip's image and text towers from a local weights file: `scorer(videos, prompts)` -> per-video CLIPSIM."""

    def __init__(self, model_name: str, weights: str | Path, device="cpu", batch: int = 64):
        import open_clip
        if model_name not in open_clip.list_models():
            raise UserError(f"--clip-model {model_name}: not an open_clip model name (e.g. ViT-H-14, ViT-B-32; "
                            "see open_clip.list_models())")
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(weights), device=device)
        except (RuntimeError, KeyError, ValueError) as e:  # a file of another model or not a checkpoint at all
            raise UserError(f"--clip {weights}: not open_clip {model_name} weights "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch = device, batch

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings [N, D]."""
        tokens = self.tokenizer(prompts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """Unit-length image embeddings [N, D] of uint8 frames [N, H, W, 3], `batch` frames at a time."""
        out = []
        for start in range(0, len(frames), self.batch):
            pixels = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[start:start + self.batch]])
            out.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def __call__(self, videos: np.ndarray, prompts: list[str]) -> torch.Tensor:
        """Per-video CLIPSIM [B] of uint8 videos [B, F, H, W, 3], video i against prompts[i]."""
        b, f = videos.shape[:2]
        images = self.image_embeddings(videos.reshape(b * f, *videos.shape[2:])).view(b, f, -1)  # [B, F, D]
        texts = self.text_embeddings(prompts)                                                     # [B, D]
        return 100 * torch.einsum("bfd,bd->bf", images, texts).mean(1).cpu().double()
