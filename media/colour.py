"""AnimateLCM-I2V's colour matching: every generated frame shifted towards the given image's colours.

The official image-to-video pipeline post-processes each decoded frame in HSV: the frame's mean
saturation and mean value are moved onto the input image's, and its mean hue 3% of the way
(docs/sources.md; AnimateLCM's utils/util.py `adjust_colors`). It fixes the overall brightness and
saturation a few-step sample gets slightly wrong, not its layout. Here it works in float on the
frames the pipeline returns (hue in degrees, saturation and value in [0, 1]); the official code does
the same in OpenCV's uint8 HSV (hue 0-180), which rounds each step, on the image file as read.
"""
from __future__ import annotations

import torch

HUE_SHARE, SATURATION_SHARE, VALUE_SHARE = 0.03, 1.0, 1.0  # how far each mean moves onto the image's


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] with channels at dim -3 -> (hue in degrees [0, 360), saturation, value) at dim -3."""
    r, g, b = rgb.unbind(-3)
    value, _ = rgb.max(-3)
    chroma = value - rgb.min(-3).values
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), torch.zeros_like(value))
    c = chroma.clamp(min=1e-12)
    sector = torch.where(value == r, (g - b) / c, torch.where(value == g, 2 + (b - r) / c, 4 + (r - g) / c))
    hue = torch.where(chroma > 0, (60 * sector) % 360, torch.zeros_like(value))
    return torch.stack([hue, saturation, value], -3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(-3)

    def channel(n: int) -> torch.Tensor:
        k = (n + hue / 60) % 6
        return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)
    return torch.stack([channel(5), channel(3), channel(1)], -3)


def match_colours(video: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """video [..., 3, F, H, W] and image [..., 3, H', W'], both in [0, 1] -> the video with each frame's
    mean hue, saturation and value moved onto the image's (by HUE_SHARE, SATURATION_SHARE, VALUE_SHARE),
    each channel clipped to its range afterwards."""
    frames = rgb_to_hsv(video.transpose(-4, -3))                        # [..., F, 3, H, W]
    target = rgb_to_hsv(image).mean((-2, -1), keepdim=True)[..., None, :, :, :]  # [..., 1, 3, 1, 1]
    shift = target - frames.mean((-2, -1), keepdim=True)
    share = frames.new_tensor([HUE_SHARE, SATURATION_SHARE, VALUE_SHARE])[:, None, None]
    top = frames.new_tensor([360.0, 1.0, 1.0])[:, None, None]
    matched = torch.minimum((frames + share * shift).clamp(min=0), top)
    return hsv_to_rgb(matched).transpose(-4, -3)
