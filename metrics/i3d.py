"""Inception-v1 I3D (Carreira & Zisserman 2017) trained on Kinetics-400: the network behind FVD.

Written to load `i3d_pretrained_400.pt`, the PyTorch conversion of DeepMind's TF-Hub
`i3d-kinetics-400` that AnimateLCM's `metrics/fvd.py` uses (piergiaj/pytorch-i3d's `InceptionI3d`
layout; docs/sources.md, evaluation). Module names are the checkpoint's, so loading is the identity on names:

    Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var},
    Mixed_3b.b0 / b1a / b1b / b2a / b2b / b3b.(conv3d|bn).*, logits.conv3d.{weight,bias}

What that port does, reproduced exactly because FVD depends on it:
* TensorFlow "SAME" padding computed from each input's size (pad k - s, or k - (n mod s) when the
  stride does not divide n; the smaller half in front), for convolutions and max-pools alike;
  max-pools pad with zeros, not -inf (harmless after a ReLU, but it is what the weights were scored with).
* BatchNorm eps 1e-5 (the TF original used 1e-3; the port, and so the paper's numbers, use 1e-5).
* The head: average pool [2, 7, 7] with stride 1, a 1x1x1 convolution to 400 logits, then the mean
  over the time positions left. For 16 frames at 224x224 one position is left: [B, 1024, 1, 1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = {"logits": 400, "pool": 1024}  # AnimateLCM's embedding; the pooled features before the head


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) of one axis: the output has ceil(size / stride) positions."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad [B, C, T, H, W] for a "SAME" kernel/stride (F.pad lists the last axis first)."""
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
    return F.pad(x, [p for pair in reversed(pads) for p in pair])


class Unit3d(nn.Module):
    """Conv3d (no bias) -> BatchNorm -> ReLU, with "SAME" padding; the logits layer: conv with bias only."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), head: bool = False):
        super().__init__()
        self.kernel, self.stride, self.head = tuple(kernel), tuple(stride), head
        self.conv3d = nn.Conv3d(c_in, c_out, self.kernel, self.stride, bias=head)
        if not head:
            self.bn = nn.BatchNorm3d(c_out, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        return x if self.head else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max-pool with "SAME" zero padding (no parameters)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool 3x3x3 -> 1x1."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3d(c_in, w0)
        self.b1a, self.b1b = Unit3d(c_in, w1a), Unit3d(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3d(c_in, w2a), Unit3d(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3d(c_in, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# Inception widths (b0, b1a, b1b, b2a, b2b, b3b) per mixed block, as in GoogLeNet / I3D
MIXED = {"Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
         "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
         "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
         "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
         "Mixed_5c": (384, 192, 384, 48, 128, 128)}


class InceptionI3d(nn.Module):
    """[B, 3, T, 224, 224] in [-1, 1] -> 400 Kinetics logits or 1024 pooled features, averaged over time."""

    def __init__(self, classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3d(3, 64, (7, 7, 7), (2, 2, 2))         # [B, 64, T/2, 112, 112]
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))     # [B, 64, T/2, 56, 56]
        self.Conv3d_2b_1x1 = Unit3d(64, 64)
        self.Conv3d_2c_3x3 = Unit3d(64, 192, (3, 3, 3))                  # [B, 192, T/2, 56, 56]
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))     # [B, 192, T/2, 28, 28]
        c = 192
        for name, widths in MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))  # [B, 480, T/4, 14, 14]
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))  # [B, 832, T/8, 7, 7]
            setattr(self, name, InceptionBlock(c, widths))
            c = getattr(self, name).out_channels                       # Mixed_5c: [B, 1024, T/8, 7, 7]
        self.logits = Unit3d(c, classes, head=True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Every block in registration order (the network's order) up to Mixed_5c."""
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        return x

    def forward(self, x: torch.Tensor, features: str = "logits") -> torch.Tensor:
        """[B, 400] logits ("logits", what AnimateLCM's FVD embeds) or [B, 1024] pooled features ("pool")."""
        if x.shape[2] < 9:  # T/8 rounded up must be at least the pool's 2 time positions
            raise ValueError(f"I3D needs at least 9 frames (got {x.shape[2]})")
        pooled = F.avg_pool3d(self.trunk(x), (2, 7, 7), stride=1)     # [B, 1024, T', H', W'] (1, 1, 1 at 16x224)
        if features == "pool":
            return pooled.flatten(3).mean((2, 3))
        return self.logits(pooled).flatten(3).mean((2, 3))  # dropout is the identity in evaluation


def load_i3d(path, device="cpu") -> InceptionI3d:
    """I3D from `i3d_pretrained_400.pt` (or a .safetensors re-save); names must match exactly.

    The converted file has no BatchNorm `num_batches_tracked` counters (unused in evaluation): they may
    be absent; a `module.` prefix (a DataParallel re-save) is removed.
    """
    from runtime.weights import load_strict, read_state_dict
    state = read_state_dict(path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = InceptionI3d()
    counters = tuple(k for k in model.state_dict() if k.endswith("num_batches_tracked"))
    load_strict(model, state, f"{path} (expected the I3D Kinetics-400 weights, i3d_pretrained_400.pt)",
                allow_missing=counters)
    return model.to(device).eval()


def i3d_input(videos: torch.Tensor, size: int = 224, resize: str = "squash") -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, size, size] in [-1, 1], as AnimateLCM's fvd.py prepares them.

    "squash": bilinear resize of the whole frame to size x size (align_corners False, no antialiasing:
    AnimateLCM's); "center-crop": the central square first, then the same resize.
    """
    b, f, h, w, _ = videos.shape
    frames = videos.flatten(0, 1).permute(0, 3, 1, 2).float()                  # [B*F, 3, H, W]
    if resize == "center-crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        frames = frames[:, :, top:top + side, left:left + side]
    elif resize != "squash":
        raise ValueError(f"resize must be squash or center-crop, not {resize!r}")
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return (2 * frames / 255 - 1).view(b, f, 3, size, size).transpose(1, 2)   # [B, 3, F, size, size]
