"""colour.py: the HSV conversion against Pillow's, and AnimateLCM-I2V's colour matching."""
import numpy as np
import pytest
import torch
from PIL import Image

from media.colour import hsv_to_rgb, match_colours, rgb_to_hsv


def test_hsv_equals_pillows_and_inverts():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[0, :4] = [[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0]]  # black, white, grey: hue 0
    theirs = np.asarray(Image.fromarray(pixels).convert("HSV")).astype(np.float64)  # all three in 0-255
    ours = rgb_to_hsv(torch.from_numpy(pixels).permute(2, 0, 1).double() / 255).numpy()
    hue_gap = np.abs(ours[0] / 360 * 255 - theirs[..., 0])
    hue_gap = np.minimum(hue_gap, 255 - hue_gap)  # hue is an angle
    assert hue_gap.max() <= 1 and np.abs(ours[1] * 255 - theirs[..., 1]).max() <= 1  # Pillow rounds to integers
    assert np.abs(ours[2] * 255 - theirs[..., 2]).max() < 1e-9
    np.testing.assert_allclose(ours[:, 0, :4].T, [[0, 0, 0], [0, 0, 1], [0, 0, 90 / 255], [0, 1, 1]], atol=1e-12)
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rgb)), rgb)


def test_matching_moves_saturation_and_value_onto_the_image_and_hue_three_percent():
    g = torch.Generator().manual_seed(0)
    video = 0.3 + 0.4 * torch.rand(2, 3, 4, 8, 8, generator=g, dtype=torch.float64)  # [N, 3, F, H, W]
    image = 0.2 + 0.5 * torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64)     # another size: only means count
    out = match_colours(video, image)
    assert out.shape == video.shape
    before, after = (rgb_to_hsv(v.transpose(1, 2)).mean((-2, -1)) for v in (video, out))  # [N, F, 3]
    target = rgb_to_hsv(image).mean((-2, -1))[:, None]                                  # [N, 1, 3]
    torch.testing.assert_close(after[..., 2], target[..., 2].expand_as(after[..., 2]))   # value: all the way
    torch.testing.assert_close(after[..., 1], target[..., 1].expand_as(after[..., 1]))   # saturation: all the way
    torch.testing.assert_close(after[..., 0] - before[..., 0], 0.03 * (target[..., 0] - before[..., 0]))
    same = image[:, :, None].expand(-1, -1, 3, -1, -1)  # a video of the image itself is left as it is
    torch.testing.assert_close(match_colours(same, image), same)


@pytest.mark.parametrize("level, expected", [(0.02, (0.0, 0.42)), (0.98, (0.58, 1.0))])
def test_matching_clips_to_the_valid_range(level, expected):
    video = torch.full((3, 2, 4, 4), 0.1, dtype=torch.float64)  # grey frames, half dark and half light
    video[..., 2:] = 0.9
    out = match_colours(video, torch.full((3, 4, 4), level, dtype=torch.float64))
    assert out.min() >= 0 and out.max() <= 1  # the shifted values are clipped, not wrapped
    torch.testing.assert_close(out[..., :2], torch.full_like(out[..., :2], expected[0]))
    torch.testing.assert_close(out[..., 2:], torch.full_like(out[..., 2:], expected[1]))
