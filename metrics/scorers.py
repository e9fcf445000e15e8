"""What a protocol measures videos with: FVD features, and a prompt score averaged over videos.

* The paper's (docs/sources.md, evaluation): I3D Kinetics-400 features (`i3d-logits`, AnimateLCM's, or the 1024-d
  `i3d-pool`) and CLIPSIM.
* The toy world's: its judge's features and prompt accuracy, built from these two classes by
  toy/classifier.py:judge_measures, which evaluate.py calls for a toy protocol (metrics/ never imports
  the toy world).

Videos cross this boundary as lists of uint8 arrays [F, H, W, 3] (real clips may differ in size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

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
