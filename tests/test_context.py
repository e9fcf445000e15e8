"""Long videos: sliding context windows and their blending."""
import pytest
import torch

from lcm.context import blend_windows, sliding_windows, window_weights


def test_windows_cover_every_frame_with_the_overlap():
    windows = sliding_windows(40, 16, 4)
    assert windows[0] == list(range(16)) and windows[-1] == list(range(24, 40))
    assert all(len(w) == 16 for w in windows)
    assert sorted({f for w in windows for f in w}) == list(range(40))
    for a, b in zip(windows, windows[1:]):
        assert len(set(a) & set(b)) >= 4
    assert sliding_windows(10, 16, 4) == [list(range(10))]
    with pytest.raises(ValueError, match="overlap"):
        sliding_windows(40, 16, 16)


def test_weights_are_a_positive_pyramid():
    assert window_weights(6).tolist() == [1, 2, 3, 3, 2, 1]
    assert window_weights(5).tolist() == [1, 2, 3, 2, 1]


def test_blending_is_exact_for_a_framewise_model_and_uses_windows():
    calls = []

    def framewise(x, t):  # the same answer for a frame whatever window it is in
        calls.append(x.shape[2])
        return 2 * x + t

    x = torch.randn(1, 4, 40, 3, 3)
    out = blend_windows(framewise, 40, 16, 4)(x, 1.0)
    torch.testing.assert_close(out, 2 * x + 1)
    assert calls == [16] * len(sliding_windows(40, 16, 4))


def test_blending_weights_window_middles_more():
    def window_position(x, t):  # each window answers with its own frame index inside the window
        return torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1).expand_as(x)

    out = blend_windows(window_position, 20, 16, 12)(torch.zeros(1, 1, 20, 1, 1), 0)[0, 0, :, 0, 0]
    # frame 4 is position 4 of window 0 (weight 5) and position 0 of window 1 (weight 1)
    assert out[4].item() == pytest.approx((4 * 5 + 0 * 1) / 6)
