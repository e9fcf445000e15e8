"""How well the pixel reading of the stock-footage mark (toy/detect.py:has_watermark) tells WebVid-like
clips from clean ones: fresh real clips of every combination, drawn with and without the condition.

    python -m toy.studies.watermark_reading                          # 1024 + 1024 filled, 256 + 256 outline
    python -m toy.studies.watermark_reading --filled 64 --outline 64 # a quick look

Printed per style: the mark's contrast (toy/detect.py:watermark_contrast, mean ± std) on clean and on
degraded clips, and the share of clips the reading gets right. docs/toy-world.md section 4.4 quotes it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from runtime import cli
from toy.classifier import to_model
from toy.detect import WATERMARK, watermark_contrast
from toy.world import ALL, WEBVID, sample_videos


def contrasts(count: int, seed: int, style: str, condition) -> torch.Tensor:
    """The mark's contrast of `count` real clips (every combination, `style`), drawn in chunks of 128."""
    out = []
    for start in range(0, count, 128):
        videos, _, _ = sample_videos(min(128, count - start), seed + start, ALL, style=style, condition=condition)
        out.append(watermark_contrast(to_model(videos)))
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--filled", type=int, default=1024, help="clips of each kind (clean, degraded) in the filled style")
    p.add_argument("--outline", type=int, default=256, help="the same in the outline style")
    p.add_argument("--seed", type=int, default=7100)
    args = p.parse_args(argv)
    print(f"threshold {WATERMARK}")
    for style, count in (("filled", args.filled), ("outline", args.outline)):
        if count < 1:
            continue
        clean = contrasts(count, args.seed, style, None)
        marked = contrasts(count, args.seed, style, WEBVID)
        right = torch.cat([clean <= WATERMARK, marked > WATERMARK]).float().mean()
        print(f"{style:>7}, {count} + {count} clips: clean {clean.mean():.3f} ± {clean.std():.3f}, "
              f"degraded {marked.mean():.3f} ± {marked.std():.3f}; right on {right:.3f} "
              f"({int((clean > WATERMARK).sum())} clean read as marked, {int((marked <= WATERMARK).sum())} degraded "
              "read as clean)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
