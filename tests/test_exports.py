"""What the project writes has exactly the keys and shapes of the official file it imitates.

Each writer runs at SD1.5 size on the meta device (shapes, no weights, no memory) and its state dict,
the one its save function writes, is compared with the manifest of the official file in
tests/fixtures/. The loading side of the same formats: test_unet.py, test_lora.py, test_controlnet.py.
Other tools tell the formats apart by their keys: a teacher's motion module carries AnimateDiff's
position tables, a consistency model's carries none, as AnimateLCM's files.
"""
import pytest
import torch

from conftest import load_manifest, manifest_state
from runtime.weights import CheckpointError, read_metadata, read_state_dict, save_safetensors
from sd15 import sd15_file_state
from text import CLIPTextEncoder, TextEncoderConfig
from tiny import TINY_HEADS, randomize
from unet.config import UNetConfig
from unet.controlnet import SD15_HINT_CHANNELS, ControlNet, controlnet_state_to_ldm
from unet.load import (LAYOUT_KEY, add_motion_modules, load_unet, motion_file_state, motion_layout, read_motion_module,
                       save_motion_module, unet_state_to_ldm)
from unet.lora import LoRANetwork
from unet.model import UNet
from vae import AutoencoderKL, VAEConfig


def shapes(state) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def official(name: str) -> dict[str, tuple]:
    """The keys and shapes of an official file (its manifest's required keys)."""
    return {k: tuple(shape) for k, shape in load_manifest(name)["keys"].items()}


def meta_unet(cfg: UNetConfig) -> UNet:
    with torch.device("meta"):
        return UNet(cfg)


# ---- SD1.5 size, meta device: each writer against its official file's manifest ---------------------

def test_sd15_single_file_has_the_keys_of_v1_5_pruned_emaonly():
    with torch.device("meta"):
        vae, text = AutoencoderKL(VAEConfig()), CLIPTextEncoder(TextEncoderConfig())
    state = sd15_file_state(meta_unet(UNetConfig.sd15()), vae, text)
    assert len(state) == 1130 and shapes(state) == official("sd15_ldm_single_file")


def test_teacher_motion_module_is_animatediff_v2_with_its_position_tables():
    """train_teacher.py --train motion: new modules on the image model, written as mm_sd_v15_v2.ckpt is."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding
    video = add_motion_modules(meta_unet(UNetConfig.sd15()))
    layout = motion_layout(video.cfg, "animatediff")
    state = motion_file_state(video, layout)
    assert layout == "animatediff_v2"
    assert len(state) == 588 and shapes(state) == official("animatediff_mm_sd_v15_v2")
    tables = {k: v for k, v in state.items() if k.endswith(".pos_encoder.pe")}
    assert len(tables) == 42
    for key, table in tables.items():  # values: the formula of AnimateDiff's PositionalEncoding (diffusers' copy)
        assert torch.equal(table, SinusoidalPositionalEmbedding(table.shape[-1], 32).pe), key


def test_stage2_motion_module_is_animatelcm_t2v():
    """train_video.py: the student is a copy of the AnimateDiff v2 teacher; its modules are written as
    AnimateLCM_sd15_t2v.ckpt is, without position tables."""
    _, teacher = read_motion_module(manifest_state("animatediff_mm_sd_v15_v2"))
    student = meta_unet(UNetConfig.sd15().with_motion(teacher))
    layout = motion_layout(student.cfg, "animatelcm")
    state = motion_file_state(student, layout)
    assert layout == "animatelcm_t2v"
    assert len(state) == 546 and shapes(state) == official("animatelcm_sd15_t2v")


@pytest.mark.parametrize("manifest,family", [
    ("animatediff_mm_sd_v15", "animatediff"), ("animatediff_mm_sd_v15_v2", "animatediff"),
    ("animatediff_v3_sd15_mm", "animatediff"), ("animatelcm_sd15_t2v", "animatelcm"),
    ("animatelcm_sd15_i2v", "animatelcm"),
])
def test_a_motion_module_is_written_in_the_layout_it_was_read_in(manifest, family):
    """A teacher continued from v1/v2/v3 (train_teacher.py --motion), a consistency model's modules and
    stage 3's I2V file (train_adapter.py: AnimateLCM t2v + image encoder) keep their official keys."""
    _, motion = read_motion_module(manifest_state(manifest))
    unet = meta_unet(UNetConfig.sd15().with_motion(motion))
    layout = motion_layout(unet.cfg, family)
    assert layout == motion.version
    assert shapes(motion_file_state(unet, layout)) == official(manifest)


def test_lora_has_the_keys_of_the_animatelcm_lora():
    """train_image.py / train_video.py --direct: rank 64 on the LCM-LoRA layers, none in the motion modules."""
    video = meta_unet(UNetConfig.sd15(motion_modules=True, motion_mid_block=True))
    state = LoRANetwork.create(video, rank=64, alpha=8).file_state()
    assert len(state) == 834 and shapes(state) == official("animatelcm_sd15_t2v_lora")
    assert {v.dtype for k, v in state.items() if k.endswith(".weight")} == {torch.float16}
    assert {v.dtype for k, v in state.items() if k.endswith(".alpha")} == {torch.float32}


def test_controlnet_has_the_keys_of_controlnet_1_1():
    """train_teacher.py --train controlnet / train_adapter.py: a new ControlNet from the UNet's encoder."""
    hint = SD15_HINT_CHANNELS[:len(VAEConfig().block_out_channels)]  # as the scripts choose it
    net = ControlNet.from_unet(meta_unet(UNetConfig.sd15()), hint_channels=hint)
    state = controlnet_state_to_ldm(net)
    assert len(state) == 340 and shapes(state) == official("controlnet_v11_sd15_ldm")


# ---- tiny files: the layout named in the metadata, read back by the loaders --------------------------

VIDEO_STRUCTURES = {  # (mid block, frame norm): AnimateDiff's layout of that structure
    (True, "per_frame"): "animatediff_v2", (False, "per_frame"): "animatediff_v3", (False, "joint"): "animatediff_v1"}


def tiny_video_unet(mid: bool, frame_norm: str, seed: int = 0) -> UNet:
    cfg = UNetConfig.tiny(motion_modules=True, motion_mid_block=mid, motion_max_frames=20, frame_norm=frame_norm)
    return randomize(UNet(cfg), seed)


@pytest.mark.parametrize("family", ["animatediff", "animatelcm"])
@pytest.mark.parametrize("mid,frame_norm", list(VIDEO_STRUCTURES))
def test_written_motion_modules_name_their_layout_and_load_back(tmp_path, family, mid, frame_norm):
    unet = tiny_video_unet(mid, frame_norm)
    save_motion_module(unet, tmp_path / "mm.safetensors", family)
    layout = read_metadata(tmp_path / "mm.safetensors")[LAYOUT_KEY]
    keys = read_state_dict(tmp_path / "mm.safetensors")
    tables = [v for k, v in keys.items() if k.endswith(".pos_encoder.pe")]
    if family == "animatediff":
        assert layout == VIDEO_STRUCTURES[mid, frame_norm]
        pe_length = 24 if layout == "animatediff_v1" else 32  # the official files' lengths
        assert len(tables) == 2 * (4 + 6 + mid) and {t.shape[1] for t in tables} == {pe_length}
    else:
        assert layout == "animatelcm_t2v" and not tables
    loaded = load_unet(unet_state_to_ldm(unet), tmp_path / "mm.safetensors", **TINY_HEADS)
    assert loaded.cfg == unet.cfg  # window and frame norm from the hints where the layout does not show them
    for (k, a), (_, b) in zip(loaded.state_dict().items(), unet.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_written_teacher_file_computes_in_diffusers_what_it_computes_here(tmp_path):
    """diffusers' AnimateDiff converter reads the AnimateDiff v2 file (dropping its position tables, which
    it computes as we do) into a model with our outputs."""
    from test_unet import assert_close, reference_video_unet, run_reference
    unet = tiny_video_unet(True, "per_frame")
    save_motion_module(unet, tmp_path / "mm.safetensors", "animatediff")
    ref = reference_video_unet(unet_state_to_ldm(unet), read_state_dict(tmp_path / "mm.safetensors"))
    x, t, c = torch.randn(1, 4, 5, 8, 8), torch.tensor([700]), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert_close(unet(x, t, c), run_reference(ref, x, t, c))


def test_a_file_whose_keys_contradict_its_stated_layout_is_refused(tmp_path):
    unet = tiny_video_unet(True, "per_frame")
    without_tables = motion_file_state(unet, "animatelcm_t2v")
    save_safetensors(without_tables, tmp_path / "mm.safetensors", {LAYOUT_KEY: "animatediff_v2"})
    with pytest.raises(CheckpointError, match="says it is written in the animatediff_v2 layout, but its keys are "
                                              "animatelcm_t2v's"):
        read_motion_module(tmp_path / "mm.safetensors")
    save_safetensors(without_tables, tmp_path / "plain.safetensors")  # no stated layout: the keys decide
    assert read_motion_module(tmp_path / "plain.safetensors")[1].version == "animatelcm_t2v"


def test_stored_position_tables_are_checked_not_loaded(tmp_path):
    unet = tiny_video_unet(True, "per_frame")
    state = motion_file_state(unet, "animatediff_v2")
    half = {k: v.half() if k.endswith(".pe") else v for k, v in state.items()}  # an fp16 re-save rounds them
    assert read_motion_module(half)[1].version == "animatediff_v2"
    key = next(k for k in state if k.endswith(".pos_encoder.pe"))
    learnt = {**state, key: state[key] + 0.1}
    with pytest.raises(CheckpointError, match=r"position table .*pos_encoder\.pe is not the fixed sinusoid"):
        read_motion_module(learnt)
