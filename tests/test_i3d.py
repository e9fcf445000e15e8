"""I3D (metrics/i3d.py): every key of the i3d_pretrained_400.pt layout with its shape (a manifest written
from the public model definition, tests/fixtures/i3d_pretrained_400.json), TF "SAME" padding, the
documented shapes for 16 frames at 224x224, and AnimateLCM's input preparation."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import load_manifest
from metrics.i3d import InceptionI3d, Unit3d, i3d_input, load_i3d, pad_same, same_padding
from runtime.weights import CheckpointError


def test_our_model_has_exactly_the_published_keys_and_shapes():
    manifest = load_manifest("i3d_pretrained_400")
    with torch.device("meta"):
        model = InceptionI3d()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    counters = {k: v for k, v in ours.items() if k.endswith("num_batches_tracked")}
    assert {k: v for k, v in ours.items() if k not in counters} == manifest["keys"]
    assert counters == manifest["optional_keys"]
    assert sum(np.prod(s) for s in manifest["keys"].values()) == manifest["num_elements"] == 12_711_824


@pytest.mark.parametrize("prefix,counters", [("", False), ("module.", True)])
def test_loads_a_file_in_the_published_layout(tmp_path, prefix, counters):
    """A torch.save of a plain dict, as the conversion script wrote it (no BatchNorm counters), or a
    DataParallel re-save with them; every tensor lands where its name says."""
    manifest = load_manifest("i3d_pretrained_400")
    g = torch.Generator().manual_seed(0)
    state = OrderedDict((k, torch.randn(shape, generator=g)) for k, shape in manifest["keys"].items())
    if counters:
        state.update({k: torch.tensor(7) for k in manifest["optional_keys"]})
    torch.save(OrderedDict((prefix + k, v) for k, v in state.items()), tmp_path / "i3d_pretrained_400.pt")
    model = load_i3d(tmp_path / "i3d_pretrained_400.pt")
    loaded = model.state_dict()
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded[k], v), k
    assert not model.training


def test_a_file_of_another_model_is_one_clear_error(tmp_path):
    manifest = load_manifest("i3d_pretrained_400")
    state = {k: torch.zeros(shape) for k, shape in manifest["keys"].items() if not k.startswith("Mixed_5c")}
    state["logits.conv3d.weight"] = torch.zeros(600, 1024, 1, 1, 1)  # the Kinetics-600 head
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"i3d_pretrained_400.pt.*missing: Mixed_5c.*wrong shape: logits"):
        load_i3d(tmp_path / "other.pt")


@pytest.mark.parametrize("size,kernel,stride,pads", [
    (224, 7, 2, (2, 3)),   # k - s = 5, the smaller half in front
    (225, 7, 2, (3, 3)),   # stride does not divide: k - (n mod s) = 6
    (16, 7, 2, (2, 3)),
    (56, 3, 2, (0, 1)),    # the 3x3 max-pools: k - s = 1, all of it behind
    (8, 3, 1, (1, 1)),
    (2, 2, 2, (0, 0)),     # MaxPool3d_5a_2x2 on 2 time steps
    (7, 2, 2, (0, 1)),
])
def test_tf_same_padding(size, kernel, stride, pads):
    assert same_padding(size, kernel, stride) == pads
    assert (size + sum(pads) - kernel) // stride + 1 == -(-size // stride)  # output ceil(size / stride)


def test_stride_one_units_pad_like_torch_same_and_pools_pad_with_zeros():
    unit = Unit3d(4, 6, (3, 3, 3))
    x = torch.randn(2, 4, 5, 9, 8)
    expected = F.conv3d(x, unit.conv3d.weight, padding="same")
    torch.testing.assert_close(unit.conv3d(pad_same(x, (3, 3, 3), (1, 1, 1))), expected)
    from metrics.i3d import MaxPool3dSame
    pooled = MaxPool3dSame((1, 3, 3), (1, 2, 2))(-torch.rand(1, 1, 1, 4, 4) - 1)  # all negative
    assert pooled.shape == (1, 1, 1, 2, 2)
    assert pooled[0, 0, 0, 1, 1] == 0  # the window reaching the zero padding behind
    assert pooled[0, 0, 0, 0, 0] < 0   # front padding is 0 wide here (k - s = 1 goes behind)


def test_forward_shapes_for_16_frames_at_224():
    """The documented sizes at each stage, and both feature kinds; the logits are the 1x1x1 head applied
    to the pooled features (one time position left at 16 frames)."""
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    x = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    outputs = {}
    for name, module in model.named_children():  # record every stage's output during one forward
        module.register_forward_hook(lambda m, args, out, name=name: outputs.setdefault(name, out))
    with torch.no_grad():
        logits = model(x)
        h = outputs["Mixed_5c"]
        model.trunk = lambda _: h  # the pooled features of the same pass, without a second one
        pooled = model(x, "pool")
    shapes = {name: tuple(out.shape[1:]) for name, out in outputs.items()}
    assert shapes["Conv3d_1a_7x7"] == (64, 8, 112, 112)
    assert shapes["MaxPool3d_2a_3x3"] == (64, 8, 56, 56)
    assert shapes["Conv3d_2c_3x3"] == (192, 8, 56, 56)
    assert shapes["Mixed_3c"] == (480, 8, 28, 28)
    assert shapes["MaxPool3d_4a_3x3"] == (480, 4, 14, 14)
    assert shapes["Mixed_4f"] == (832, 4, 14, 14)
    assert shapes["MaxPool3d_5a_2x2"] == (832, 2, 7, 7)
    assert shapes["Mixed_5c"] == (1024, 2, 7, 7)
    assert shapes["logits"] == (400, 1, 1, 1)
    assert list(shapes)[-2:] == ["Mixed_5c", "logits"] and len(shapes) == 17
    assert logits.shape == (1, 400) and pooled.shape == (1, 1024)
    w, b = model.logits.conv3d.weight.flatten(1), model.logits.conv3d.bias
    torch.testing.assert_close(logits, pooled @ w.T + b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, h.mean((2, 3, 4)), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="at least 9 frames"):
        InceptionI3d()(x[:, :, :8])


def test_input_is_animatelcms_preprocessing():
    """uint8 [B, F, H, W, 3] -> [B, 3, F, 224, 224]: each frame bilinearly resized (align_corners False,
    no antialiasing), then 2 x / 255 - 1; frames keep their order and videos stay apart."""
    videos = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 40, 60, 3), dtype=np.uint8))
    x = i3d_input(videos)
    assert x.shape == (2, 3, 3, 224, 224) and x.min() >= -1 and x.max() <= 1
    frame = videos[1, 2].permute(2, 0, 1)[None].float()
    expected = 2 * F.interpolate(frame, size=(224, 224), mode="bilinear", align_corners=False)[0] / 255 - 1
    torch.testing.assert_close(x[1, :, 2], expected, rtol=0, atol=1e-6)
    cropped = i3d_input(videos, resize="center-crop")
    square = videos[1, 2, :, 10:50].permute(2, 0, 1)[None].float()
    expected = 2 * F.interpolate(square, size=(224, 224), mode="bilinear", align_corners=False)[0] / 255 - 1
    torch.testing.assert_close(cropped[1, :, 2], expected, rtol=0, atol=1e-6)
