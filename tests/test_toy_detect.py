"""The toy world's pixel detector: it must read real clips (and the VAE's reconstructions of them)
before its reading of generated videos means anything."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toy.classifier import ATTRIBUTES, labels, to_model  # noqa: E402
from toy.detect import detect, detect_stills  # noqa: E402
from toy.world import ALL, sample_videos  # noqa: E402


def accuracy(preds, clips, key, truth="direction"):
    return float((preds[key] == labels(clips)[truth if key == "trail" else key]).float().mean())


def test_detector_reads_real_clips_and_stills():
    videos, _, clips = sample_videos(240, 321, ALL)  # all 48 combinations, held-out ones included
    x = to_model(videos)
    preds = detect(x)
    for key in (*ATTRIBUTES, "trail"):
        assert accuracy(preds, clips, key) >= 0.95, key
    stills = detect_stills(x[:, :, 5])  # one frame: the direction from the trail's side alone
    for key in ATTRIBUTES:
        assert accuracy(stills, clips, key) >= 0.95, key


def test_detector_is_not_fooled_by_reversed_or_blank_videos():
    videos, _, clips = sample_videos(48, 7, ALL)
    x = to_model(videos)
    backwards = detect(x.flip(2))  # played backwards: the shape moves against its trail
    assert accuracy(backwards, clips, "direction") < 0.05  # motion is read from the frames' order
    assert accuracy(backwards, clips, "trail") >= 0.95     # the trail from each frame alone
    blank = detect(torch.zeros_like(x))  # grey: nothing to read
    assert all((blank[k] == -1).all() for k in blank)


def test_health_scores_real_clips_of_its_fixed_prompts_as_right():
    """fixed_prompts' labels line up with its captions: real clips of those captions score ~1."""
    from toy.health import fixed_prompts, scores
    from toy.world import SEEN, Clip, parse_caption, render
    captions, target = fixed_prompts(SEEN, repeats=2)
    assert len(captions) == 2 * len(SEEN) and captions[0] == "a red circle moving left"
    clips = [Clip(*parse_caption(c), size=11.0, start=(0.5, 0.5), speed=1.5, background=(110, 110, 110), texture=0)
             for c in captions]
    videos = to_model(np.stack([render(c)[0] for c in clips]))
    right = scores(detect(videos), target)
    assert right["all"] >= 0.95 and min(right.values()) >= 0.95
    wrong = scores(detect(videos.flip(2)), target)  # reversed: every direction wrong, nothing else
    assert wrong["direction"] == 0 and wrong["all"] == 0 and wrong["colour"] >= 0.95


def test_linear_probe_reads_a_linear_label_and_not_noise():
    from toy.probe import linear_probe
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 16, generator=g)
    label = features[:, :4].argmax(1)
    assert linear_probe(features, label, 300, 4) >= 0.85  # argmax of 4 features: a linear rule (0.90 measured)
    assert linear_probe(features, torch.randint(0, 4, (400,), generator=g), 300, 4) <= 0.45
