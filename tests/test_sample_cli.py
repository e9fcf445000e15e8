"""sample.py end to end on tiny random weights: files written and read back, and every bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

import sample
from sd15 import save_sd15
from test_sd15 import tiny_parts
from tiny import randomize
from unet.load import save_motion_module
from unet.model import UNet
from media.video import read_video, write_video


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    unet, vae, text = tiny_parts()
    save_sd15(d / "sd15.safetensors", unet, vae, text)
    for name, image_encoder in (("t2v", False), ("i2v", True)):
        cfg = unet.cfg.__class__(**{**unet.cfg.__dict__, "motion_modules": True, "motion_mid_block": True,
                                    "motion_max_frames": 24, "image_encoder": image_encoder})
        video_unet = randomize(UNet(cfg), 7)
        save_motion_module(video_unet, d / f"{name}.safetensors", "animatelcm")
    return d


def run(weights, tmp_path, *extra, motion="t2v"):
    args = ["--sd15", str(weights / "sd15.safetensors"), "--motion", str(weights / f"{motion}.safetensors"),
            "--height", "32", "--width", "48", "--frames", "5", "--steps", "2", "--seed", "1", *extra]
    return sample.main(args)


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webp", ""])
def test_writes_videos_that_read_back(weights, tmp_path, capsys, suffix):
    out = tmp_path / f"video{suffix}"
    assert run(weights, tmp_path, "--out", str(out), "--fps", "10") == 0
    assert f"wrote {out}" in capsys.readouterr().out
    frames = read_video(out)
    assert frames.shape == (5, 32, 48, 3)
    if suffix == ".gif":
        with Image.open(out) as im:
            assert im.n_frames == 5 and im.info["duration"] == 100  # ms per frame at 10 fps
    if suffix == ".mp4":
        import av
        with av.open(str(out)) as c:
            assert c.streams.video[0].average_rate == 10


def test_same_seed_same_video_and_guidance_runs(weights, tmp_path):
    run(weights, tmp_path, "--out", str(tmp_path / "a"), "--guidance", "1.5", "--negative-prompt", "bad")
    run(weights, tmp_path, "--out", str(tmp_path / "b"), "--guidance", "1.5", "--negative-prompt", "bad")
    assert np.array_equal(read_video(tmp_path / "a"), read_video(tmp_path / "b"))


def test_image_to_video(weights, tmp_path):
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "first.png")
    assert run(weights, tmp_path, "--out", str(tmp_path / "i2v"), "--image", str(tmp_path / "first.png"),
               motion="i2v") == 0
    assert read_video(tmp_path / "i2v").shape == (5, 32, 48, 3)
    # AnimateLCM-I2V's colour matching (on by default) brings each frame's mean brightness to the image's
    assert run(weights, tmp_path, "--out", str(tmp_path / "raw"), "--image", str(tmp_path / "first.png"),
               "--match-colours", "false", motion="i2v") == 0
    matched, raw = (read_video(tmp_path / name).max(-1).mean((1, 2)) for name in ("i2v", "raw"))  # HSV value
    assert np.abs(matched - 200).max() < 5 and np.abs(raw - 200).min() > 20, (matched, raw)  # (a few pixels clip)
    # anchoring the first frame (the replacement before each re-noising) changes the video, seeded
    for name in ("anchored", "anchored_again"):
        assert run(weights, tmp_path, "--out", str(tmp_path / name), "--image", str(tmp_path / "first.png"),
                   "--anchor-first-frame", "true", motion="i2v") == 0
    anchored = read_video(tmp_path / "anchored")
    assert np.array_equal(anchored, read_video(tmp_path / "anchored_again"))
    assert not np.array_equal(anchored, read_video(tmp_path / "i2v"))


def test_video_to_video_and_long_video(weights, tmp_path, capsys):
    source = (np.random.default_rng(0).random((6, 32, 48, 3)) * 255).astype(np.uint8)
    write_video(source, tmp_path / "source.gif", fps=8)
    assert run(weights, tmp_path, "--out", str(tmp_path / "v2v"), "--video", str(tmp_path / "source.gif"),
               "--strength", "0.5") == 0
    assert read_video(tmp_path / "v2v").shape == (5, 32, 48, 3)
    assert "2 lcm steps)" in capsys.readouterr().out  # the LCM convention: every step, on a shorter grid
    assert run(weights, tmp_path, "--out", str(tmp_path / "v2v_ddim"), "--video", str(tmp_path / "source.gif"),
               "--strength", "0.5", "--sampler", "ddim") == 0
    assert "1 of 2 ddim steps, the last ones (--strength 0.5))" in capsys.readouterr().out  # the steps that ran
    for spacing in ("leading", "trailing"):  # trailing starts at t = 999: another video from the same noise
        assert run(weights, tmp_path, "--out", str(tmp_path / spacing), "--sampler", "ddim", "--timestep-spacing",
                   spacing) == 0
    assert not np.array_equal(read_video(tmp_path / "leading"), read_video(tmp_path / "trailing"))
    assert run(weights, tmp_path, "--out", str(tmp_path / "long"), "--frames", "30", "--context-frames", "8") == 0
    assert read_video(tmp_path / "long").shape == (30, 32, 48, 3)


@pytest.mark.parametrize("extra,message", [
    (["--height", "30"], "multiples of 8"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--guidance", "0.5"], "--guidance must be at least 1"),
    (["--frames", "30"], "window of 24.*--context-frames"),
    (["--image", "missing.png"], "no such file"),
    (["--anchor-first-frame", "true"], "--anchor-first-frame needs --image and --sampler lcm"),
    (["--timestep-spacing", "trailing"], "--timestep-spacing trailing does not apply to --sampler lcm"),
])
def test_bad_input_gets_a_clear_message(weights, tmp_path, capsys, extra, message):
    assert run(weights, tmp_path, "--out", str(tmp_path / "x.gif"), *extra) == 2
    import re
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x.gif").exists()


def test_wrong_kind_of_file(weights, tmp_path, capsys):
    args = ["--sd15", str(weights / "t2v.safetensors"), "--out", str(tmp_path / "x.gif")]
    assert sample.main(args) == 2
    assert "motion module (pass it with --motion)" in capsys.readouterr().err
    sdxl = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(2)}
    from runtime.weights import save_safetensors
    save_safetensors(sdxl, tmp_path / "sdxl.safetensors")
    assert sample.main(["--sd15", str(tmp_path / "sdxl.safetensors")]) == 2
    assert "SDXL" in capsys.readouterr().err


def test_no_weights_prints_what_to_pass(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sample.TOY, "sd15", tmp_path / "absent.safetensors")
    assert sample.main([]) == 0
    assert "--sd15" in capsys.readouterr().out


def test_controlnet_with_its_lora_steers_the_video(weights, tmp_path):
    """--controlnet + --control: a ControlNet made from the UNet (zero convs) changes nothing; a trained
    one (random zero convs, and a LoRA on it) changes the video."""
    from test_sd15 import tiny_parts
    from test_lora import random_kohya_lora
    from unet.controlnet import ControlNet, controlnet_state_to_ldm
    from runtime.weights import save_safetensors
    unet, _, _ = tiny_parts()
    identity = ControlNet.from_unet(unet, hint_channels=(8, 16))  # one 2x downsampling, as this tiny VAE
    save_safetensors(controlnet_state_to_ldm(identity), tmp_path / "identity.safetensors")
    save_safetensors(controlnet_state_to_ldm(randomize(identity, 3)), tmp_path / "random.safetensors")
    save_safetensors(random_kohya_lora(identity, rank=2), tmp_path / "control_lora.safetensors")
    control = (np.random.default_rng(1).random((5, 32, 48, 3)) * 255).astype(np.uint8)
    write_video(control, tmp_path / "control.gif", fps=8)
    videos = {}
    for name, extra in [("plain", []), ("identity", ["--controlnet", str(tmp_path / "identity.safetensors")]),
                        ("random", ["--controlnet", str(tmp_path / "random.safetensors")]),
                        ("lora", ["--controlnet", str(tmp_path / "random.safetensors"),
                                  "--controlnet-lora", str(tmp_path / "control_lora.safetensors")])]:
        control_args = ["--control", str(tmp_path / "control.gif")] if extra else []
        assert run(weights, tmp_path, "--out", str(tmp_path / name), *extra, *control_args) == 0
        videos[name] = read_video(tmp_path / name).astype(int)
    assert np.abs(videos["identity"] - videos["plain"]).max() <= 1  # uint8 rounding at most
    assert np.abs(videos["random"] - videos["plain"]).max() > 10
    assert np.abs(videos["lora"] - videos["random"]).max() > 10


def test_control_needs_a_controlnet_and_the_right_frames(weights, tmp_path, capsys):
    write_video(np.zeros((3, 32, 48, 3), np.uint8), tmp_path / "short.gif", fps=8)
    assert run(weights, tmp_path, "--control", str(tmp_path / "short.gif")) == 2
    assert "--controlnet and --control go together" in capsys.readouterr().err
