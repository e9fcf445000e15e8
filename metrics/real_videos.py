"""The real side of FVD: features of `count` randomly drawn real clips, reduced to (mean, covariance).

The paper draws 2,048 random UCF-101 videos (AnimateLCM v3 sec. 4.1; docs/sources.md); how frames were
taken from them is not specified. Here: the clips under a folder (any depth; .avi, .mp4, .gif, ...) in
sorted order are shuffled by a seeded generator and read in that order, the first `frames` frames at
`stride` each, until `count` clips have enough frames (shorter or unreadable ones are skipped and
counted). The statistics are computed once and cached as .npz in the output folder, under a name derived
from everything that determines them (the folder's file list and sizes, the counts, the features and the
sha256 of the feature network's weights).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from runtime.cli import UserError
from runtime.files import atomic_write
from metrics.fvd import feature_statistics

REAL_SUFFIXES = (".avi", ".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp", ".mpg", ".mpeg")


def list_clips(folder: Path) -> list[Path]:
    clips = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in REAL_SUFFIXES)
    if not clips:
        raise UserError(f"--real-videos {folder}: no video clips found ({', '.join(REAL_SUFFIXES)}); expected a "
                        "folder of real clips, e.g. UCF-101's .avi files")
    return clips


def shuffled_clips(folder: Path, frames: int, stride: int, seed: int):
    """Yield (path, uint8 clip [frames, H, W, 3] or None when unreadable or too short), in seeded random order."""
    from media.video import read_video
    clips = list_clips(folder)
    for i in np.random.default_rng(seed).permutation(len(clips)):
        try:
            video = read_video(clips[i], max_frames=frames, stride=stride)
        except (UserError, OSError):
            video = None
        yield clips[i], (video if video is not None and len(video) == frames else None)


def real_statistics(folder: Path | None, embed, settings: dict, count: int, frames: int, stride: int,
                    seed: int, cache_dir: Path, draw: tuple[str, Callable[[int], np.ndarray]] | None = None) -> dict:
    """{"mu", "sigma", "count", "skipped", "file"} of the real clips' features, cached in `cache_dir`.

    `settings` names the features (and their weights' sha256). Without a folder, `draw` = (what it draws,
    `draw(count)` -> uint8 clips [count, F, H, W, 3]) makes the real clips instead: evaluate.py's toy
    protocol draws fresh toy-world clips (as toy/classifier.py's real_reference); the description is part
    of the cache's name.
    """
    if folder is not None:
        listing = [(str(p.relative_to(folder)), p.stat().st_size) for p in list_clips(folder)]
        source = {"folder": str(Path(folder).resolve()), "listing_sha256": _sha(listing)}
    elif draw is not None:
        source = {"toy_world": draw[0]}  # (the key's name keeps the cache names of earlier toy evaluations)
    else:
        raise ValueError("real_statistics needs a folder of real clips or a `draw` that makes them")
    key = {**settings, **source, "requested": count, "frames": frames, "stride": stride, "seed": seed}
    cache = Path(cache_dir) / f"real_statistics_{settings['features']}_{_sha(key)[:12]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            info = json.loads(str(f["info"]))
            return {"mu": f["mu"], "sigma": f["sigma"], **info, "file": str(cache)}

    features, skipped = [], []
    with tqdm(total=count, desc="real clips", unit="clip") as bar:
        if folder is None:
            features.append(embed(list(draw[1](count))))
            bar.update(count)
        else:
            used, pending = 0, []
            for path, video in shuffled_clips(folder, frames, stride, seed):
                if video is None:
                    skipped.append(path)
                    continue
                pending.append(video)
                used += 1
                if len(pending) == 64 or used == count:  # a bounded number of clips in memory at once
                    features.append(embed(pending))
                    bar.update(len(pending))
                    pending = []
                if used == count:
                    break
            if pending:  # the folder ran out before `count` clips
                features.append(embed(pending))
                bar.update(len(pending))
    features = torch.cat(features)
    if len(features) < 2:
        raise UserError(f"--real-videos {folder}: only {len(features)} clips with {frames} frames (at --real-stride "
                        f"{stride}) could be read; FVD needs at least 2")
    mu, sigma = feature_statistics(features)
    info = {**key, "count": len(features), "skipped": len(skipped), "skipped_examples": [str(p) for p in skipped[:5]]}
    if len(features) < count:
        print(f"--real-videos {folder}: {len(features)} usable clips, fewer than the {count} asked for (--fvd-real)")
    with atomic_write(cache) as tmp, open(tmp, "wb") as f:  # whole or absent: an interrupted run computes it again
        np.savez(f, mu=mu.numpy(), sigma=sigma.numpy(), info=np.array(json.dumps(info)))
    return {"mu": mu.numpy(), "sigma": sigma.numpy(), **info, "file": str(cache)}


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
