"""CLIPSIM (metrics/clipsim.py) equals open_clip's own model output on the same random weights: a tiny
open_clip architecture registered from a config (nothing downloaded), saved to a file and loaded back
through the path the real ViT-H/14 weights take."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.cli import UserError
from metrics.clipsim import CLIPScorer

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PROMPTS = ["A girl applying eye makeup.", "A person doing wall pushups."]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model name, weights file, the open_clip model itself): random weights, logit scale set to 100."""
    import open_clip
    folder = tmp_path_factory.mktemp("clip")
    (folder / "tiny-clipsim-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / "tiny-clipsim-test.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clipsim-test")  # random: no weights asked for
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))  # as in the trained ViT-H/14 (the CLIP logit cap)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return "tiny-clipsim-test", folder / "open_clip_pytorch_model.bin", model.eval(), preprocess


def videos(seed: int = 0) -> np.ndarray:
    """Two 3-frame 40x56 videos (not square: the centre crop matters)."""
    return np.random.default_rng(seed).integers(0, 256, (2, 3, 40, 56, 3), dtype=np.uint8)


def test_clipsim_is_open_clips_image_text_logit_averaged_over_frames(tiny_clip):
    import open_clip
    name, weights, model, preprocess = tiny_clip
    v = videos()
    ours = CLIPScorer(name, weights)(v, PROMPTS)
    with torch.no_grad():  # open_clip's own forward: features and the logit scale
        pixels = torch.stack([preprocess(Image.fromarray(f)) for f in v.reshape(6, 40, 56, 3)])
        image, text, scale = model(pixels, open_clip.get_tokenizer(name)(PROMPTS))
        logits = scale * image @ text.T                         # [6 frames, 2 prompts]
    expected = logits.view(2, 3, 2)[[0, 1], :, [0, 1]].mean(1)  # each video's frames against its own prompt
    assert ours.shape == (2,) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected.double(), rtol=1e-5, atol=1e-4)
    swapped = CLIPScorer(name, weights)(v, PROMPTS[::-1])
    torch.testing.assert_close(swapped, logits.view(2, 3, 2)[[0, 1], :, [1, 0]].mean(1).double(), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(ours, swapped)


def test_frame_batches_do_not_change_the_score(tiny_clip):
    name, weights, _, _ = tiny_clip
    v = videos(1)
    whole = CLIPScorer(name, weights, batch=64)(v, PROMPTS)
    torch.testing.assert_close(CLIPScorer(name, weights, batch=2)(v, PROMPTS), whole, rtol=1e-5, atol=1e-5)


def test_wrong_name_or_weights_are_one_line(tiny_clip, tmp_path):
    name, _, _, _ = tiny_clip
    with pytest.raises(UserError, match="--clip-model ViT-Tiny-404: not an open_clip model name"):
        CLIPScorer("ViT-Tiny-404", tmp_path / "x.bin")
    torch.save({"visual.proj": torch.zeros(3, 3)}, tmp_path / "other.bin")
    with pytest.raises(UserError, match=f"--clip {tmp_path / 'other.bin'}: not open_clip {name} weights") as e:
        CLIPScorer(name, tmp_path / "other.bin")
    assert "\n" not in str(e.value)
