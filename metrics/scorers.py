"""What a protocol measures videos with: FVD features, and a prompt score averaged over videos.

* The paper's (docs/sources.md, evaluation): I3D Kinetics-400 features (`i3d-logits`, AnimateLCM's, or the 1024-d
  `i3d-pool`) and CLIPSIM.
* The toy world's: the judge of toy/classifier.py (its 64-d features, as the toy FVD of toy/evaluate.py
  uses them) and its prompt accuracy (colour, shape and direction all as the prompt says: 1, else 0).
  The toy world has no image tower beside its text encoder, so the judge stands in for CLIP.

Videos cross this boundary as lists of uint8 arrays [F, H, W, 3] (real clips may differ in size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from runtime.cli import UserError

FEATURES = ("i3d-logits", "i3d-pool", "toy-judge")
PROMPT_SCORES = ("clipsim", "prompt-accuracy")


@dataclass
class Embedder:
    """FVD features: `embed(videos)` -> float64 [N, D]."""
    name: str
    embed: Callable[[list[np.ndarray]], torch.Tensor]


@dataclass
class PromptScorer:
    """`score(videos, prompts)` -> float64 [N], one number per video (CLIPSIM, or 1/0 prompt accuracy)."""
    name: str
    score: Callable[[list[np.ndarray], list[str]], torch.Tensor]


def i3d_embedder(weights: Path, features: str, resize: str, device="cpu", batch: int = 8) -> Embedder:
    """I3D features of 224x224 frames in [-1, 1], `batch` videos at a time (AnimateLCM's fvd.py: 8)."""
    from metrics.i3d import i3d_input, load_i3d
    model = load_i3d(weights, device)
    kind = features.removeprefix("i3d-")

    @torch.no_grad()
    def embed(videos: list[np.ndarray]) -> torch.Tensor:
        out = []
        for start in range(0, len(videos), batch):
            x = torch.cat([i3d_input(torch.from_numpy(v)[None], 224, resize) for v in videos[start:start + batch]])
            out.append(model(x.to(device), kind).double().cpu())
        return torch.cat(out)
    return Embedder(features, embed)


def clipsim_scorer(model_name: str, weights: Path, device="cpu") -> PromptScorer:
    from metrics.clipsim import CLIPScorer
    clip = CLIPScorer(model_name, weights, device)

    def score(videos: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
        return torch.cat([clip(v[None], [p]) for v, p in zip(videos, prompts)]) if videos else torch.zeros(0)
    return PromptScorer("clipsim", score)


def load_judge(weights: Path, frames: int, device="cpu"):
    """The toy world's VideoClassifier from its safetensors file (toy/weights/toy_classifier.safetensors)."""
    from safetensors.torch import load_file
    from toy.classifier import VideoClassifier
    from runtime.weights import load_strict
    model = VideoClassifier(frames)
    load_strict(model, load_file(str(weights)), f"{weights} (expected the toy judge, toy_classifier.safetensors)")
    return model.to(device).eval()


def toy_judge(weights: Path, frames: int, device="cpu") -> tuple[Embedder, PromptScorer]:
    """The judge's penultimate features (toy FVD) and its prompt accuracy (toy CLIPSIM)."""
    from toy.classifier import ATTRIBUTES, judge, labels
    from toy.world import parse_caption
    model = load_judge(weights, frames, device)

    def run(videos: list[np.ndarray]):
        shapes = {v.shape for v in videos}
        if shapes != {(frames, 32, 32, 3)}:
            raise UserError(f"the toy judge reads {frames}-frame 32x32 videos; got {sorted(shapes)}")
        x = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [N, 3, F, 32, 32]
        return judge(model, x.to(device))

    def score(videos: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
        _, predictions = run(videos)
        clips = [SimpleNamespace(**dict(zip(ATTRIBUTES, parse_caption(p)))) for p in prompts]
        target = labels(clips)
        right = torch.stack([predictions[k].cpu() == target[k] for k in ATTRIBUTES]).all(0)
        return right.double()
    return Embedder("toy-judge", lambda videos: run(videos)[0].cpu()), PromptScorer("prompt-accuracy", score)
