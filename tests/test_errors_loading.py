"""Weights files that cannot be used, through the command lines: one line naming the file and what it
is, exit code 2, no pickle ever run; and a diffusers folder's VAE config is read like the others'."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from sd15 import load_sd15
from test_errors_training import world  # noqa: F401 - fixture
from test_sample_cli import weights  # noqa: F401 - fixture
from test_train import image_args
from tiny import TINY_VAE, randomize, tiny_reference_parts

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def sample_error(capsys, *args) -> str:
    code = sample.main([*args, "--height", "32", "--width", "32", "--frames", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_files_that_are_not_weights(weights, tmp_path, capsys):
    (tmp_path / "page.ckpt").write_text("<html><body>404 Not Found</body></html>")
    err = sample_error(capsys, "--sd15", str(tmp_path / "page.ckpt"))
    assert f"{tmp_path / 'page.ckpt'}: not a PyTorch checkpoint (it begins '<html><body>404 Not Found" in err
    assert "arbitrary code" not in err  # a text file is no dangerous pickle
    torch.save({"state_dict": {"w": Payload(tmp_path / "pwned")}}, tmp_path / "evil.ckpt")
    err = sample_error(capsys, "--sd15", str(weights / "sd15.safetensors"), "--motion", str(tmp_path / "evil.ckpt"))
    assert f"{tmp_path / 'evil.ckpt'}: refused to load" in err and "could run arbitrary code" in err
    assert "posix.system" in err and "weights_only` set to `False`" not in err  # the reason, not torch's advice
    assert not (tmp_path / "pwned").exists()
    data = (weights / "sd15.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    err = sample_error(capsys, "--sd15", str(weights / "sd15.safetensors"), "--lora", str(tmp_path / "cut.safetensors"))
    assert f"{tmp_path / 'cut.safetensors'}: not a readable safetensors file" in err


def test_messages_name_the_file_not_a_state_dict(weights, capsys):
    err = sample_error(capsys, "--sd15", str(weights / "t2v.safetensors"))
    assert f"{weights / 't2v.safetensors'} is a motion module (pass it with --motion)" in err
    assert "state dict" not in err


def test_a_training_script_refuses_a_malicious_pickle_in_one_line(world, tmp_path):
    torch.save({"state_dict": {"w": Payload(tmp_path / "pwned")}}, tmp_path / "evil.ckpt")
    args = image_args(world, tmp_path / "out", "--sd15", str(tmp_path / "evil.ckpt"))
    run = subprocess.run([sys.executable, str(ROOT / "train_image.py"), *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and "Traceback" not in run.stderr and not (tmp_path / "pwned").exists()
    assert run.stderr.splitlines()[-1].startswith(f"error: {tmp_path / 'evil.ckpt'}: refused to load")


def test_a_diffusers_folder_brings_its_vae_config(tmp_path):
    """vae/config.json's norm_num_groups and scaling_factor are used (SD1.5's 32 groups would not even
    fit these 16-channel blocks)."""
    from diffusers import AutoencoderKL
    unet2d, _, _, text = tiny_reference_parts()
    vae = randomize(AutoencoderKL(**{**TINY_VAE, "block_out_channels": (16, 32), "scaling_factor": 0.3,
                                     "down_block_types": ("DownEncoderBlock2D",) * 2,
                                     "up_block_types": ("UpDecoderBlock2D",) * 2}), 5, scale=0.05)
    for name, part in (("unet", unet2d), ("vae", vae), ("text_encoder", text)):
        part.save_pretrained(tmp_path / "pipe" / name)
    model = load_sd15(tmp_path / "pipe")
    assert (model.vae.cfg.norm_groups, model.vae.cfg.scaling_factor) == (8, 0.3)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.vae.decode(z), vae.decode(z).sample, atol=1e-5, rtol=1e-4)


def test_a_vae_that_fits_no_groupnorm_is_one_line(tmp_path):
    from vae import load_vae
    from runtime.weights import CheckpointError
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**{**TINY_VAE, "block_out_channels": (16, 32), "down_block_types": ("DownEncoderBlock2D",) * 2,
                           "up_block_types": ("UpDecoderBlock2D",) * 2})
    vae.save_pretrained(tmp_path / "vae")
    with pytest.raises(CheckpointError, match=r"no VAE with 32 GroupNorm groups fits its channels \(16, 32\)"):
        load_vae(tmp_path / "vae", norm_groups=32)
