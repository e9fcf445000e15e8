"""The toy world's judge: a small video classifier for colour, shape and direction, trained on real clips.

Its penultimate features stand in for the I3D features of FVD (a toy Frechet video distance between
generated and real clips), and its predictions for CLIPSIM (a toy prompt accuracy: the share of
generated videos whose colour, shape and direction all match the prompt).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from toy.constants import FRAMES
from toy.world import COLOURS, DIRECTIONS, SEEN, SHAPES, sample_videos

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "direction": tuple(DIRECTIONS)}


class VideoClassifier(nn.Module):
    """[B, 3, F, H, W] in [-1, 1] -> 64-d features and a logit vector per attribute."""

    def __init__(self, frames: int = 8, features: int = 64):
        super().__init__()

        def block(c_in, c_out, pool):
            return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                                 nn.MaxPool3d(pool))
        self.body = nn.Sequential(block(3, 32, (1, 2, 2)), block(32, 64, (1, 2, 2)), block(64, 64, (2, 2, 2)))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * (frames // 2), features), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(features, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.body(video).amax(dim=(3, 4))  # where the shape is matters less than that it is there
        feats = self.features(h)
        return feats, {k: head(feats) for k, head in self.heads.items()}


def labels(clips) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v.index(getattr(c, k)) for c in clips]) for k, v in ATTRIBUTES.items()}


def to_model(videos: np.ndarray) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] -> float [N, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def train_classifier(steps: int = 600, batch: int = 64, lr: float = 2e-3, frames: int = 8, resolution: int = 32,
                     seed: int = 0, progress: bool = True) -> VideoClassifier:
    """Trained on all combinations (held-out ones included: it judges, it is not judged)."""
    from toy.world import ALL
    torch.manual_seed(seed)
    model = VideoClassifier(frames).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="toy classifier", disable=not progress)
    for step in bar:
        videos, _, clips = sample_videos(batch, 20_000 + seed * steps + step, ALL, frames, resolution)
        _, logits = model(to_model(videos))
        target = labels(clips)
        loss = sum(nn.functional.cross_entropy(logits[k], target[k]) for k in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def judge(model: VideoClassifier, videos: torch.Tensor, batch: int = 128):
    """(features [N, 64] float64, predictions {attribute: [N] indices}) of videos [N, 3, F, H, W] in [-1, 1]."""
    feats, preds = [], {k: [] for k in ATTRIBUTES}
    for chunk in videos.split(batch):
        f, logits = model(chunk.float().clamp(-1, 1))
        feats.append(f.double())
        for k in ATTRIBUTES:
            preds[k].append(logits[k].argmax(-1))
    return torch.cat(feats), {k: torch.cat(v) for k, v in preds.items()}


def prompt_accuracy(preds: dict[str, torch.Tensor], clips) -> float:
    """Share of videos whose colour, shape and direction all match their prompt (toy CLIPSIM)."""
    target = labels(clips)
    right = torch.stack([preds[k] == target[k] for k in ATTRIBUTES]).all(0)
    return float(right.float().mean())


def attribute_accuracy(preds: dict[str, torch.Tensor], clips) -> dict[str, float]:
    """Share of videos whose colour, shape or direction (each on its own) matches their prompt."""
    target = labels(clips)
    return {k: float((preds[k] == target[k]).float().mean()) for k in ATTRIBUTES}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets (toy FVD): the real
    evaluation's Frechet distance (metrics/fvd.py), so the miniature and the paper's FVD are one computation."""
    from metrics.fvd import fvd
    return fvd(a, b)


def real_reference(model: VideoClassifier, count: int, seed: int, combos=SEEN, frames: int = 8,
                   resolution: int = 32, style: str = "filled") -> torch.Tensor:
    """Classifier features of `count` fresh real clips (in `style`): the reference set of the toy FVD."""
    videos, _, _ = sample_videos(count, seed, combos, frames, resolution, style)
    return judge(model, to_model(videos))[0]


def load_classifier(path: Path, frames: int = FRAMES, device="cpu") -> VideoClassifier:
    """The judge from its safetensors file (toy/weights/toy_classifier.safetensors)."""
    from safetensors.torch import load_file
    from runtime.weights import load_strict
    model = VideoClassifier(frames)
    load_strict(model, load_file(str(path)), f"{path} (expected the toy judge, toy_classifier.safetensors)")
    return model.to(device).eval()


def judge_measures(weights: Path, frames: int, device="cpu"):
    """evaluate.py's toy protocol (metrics/scorers.py's Embedder and PromptScorer): the judge's penultimate
    features for the toy FVD, and its prompt accuracy for the toy CLIPSIM (1 when colour, shape and direction
    all match the prompt, else 0). The toy world has no image tower beside its text encoder, so the judge
    stands in for CLIP."""
    from types import SimpleNamespace
    from metrics.scorers import Embedder, PromptScorer
    from runtime.cli import UserError
    from toy.world import parse_caption
    model = load_classifier(weights, frames, device)

    def run(videos: list[np.ndarray]):
        shapes = {v.shape for v in videos}
        if shapes != {(frames, 32, 32, 3)}:
            raise UserError(f"the toy judge reads {frames}-frame 32x32 videos; got {sorted(shapes)}")
        return judge(model, to_model(np.stack(videos)).to(device))

    def score(videos: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
        _, predictions = run(videos)
        clips = [SimpleNamespace(**dict(zip(ATTRIBUTES, parse_caption(p)))) for p in prompts]
        target = labels(clips)
        return torch.stack([predictions[k].cpu() == target[k] for k in ATTRIBUTES]).all(0).double()
    return Embedder("toy-judge", lambda videos: run(videos)[0].cpu()), PromptScorer("prompt-accuracy", score)
