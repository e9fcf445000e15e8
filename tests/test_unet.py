"""The UNet (2D and with motion modules) equals diffusers on the same weights, read from real formats."""
import pickle

import pytest
import torch
from torch import nn

from conftest import manifest_state
from tiny import (PerFrameGroupNorm, TINY_HEADS, TINY_UNET, ldm_unet_file_state, original_motion_file_state,
                  tiny_diffusers_unet, tiny_motion_adapter)
from unet.config import UNetConfig
from unet.keymap import motion_from_diffusers, motion_to_diffusers, unet_to_ldm
from unet.load import load_unet, read_motion_module, read_sd15_unet
from unet.model import UNet
from runtime.weights import CheckpointError, save_safetensors


def assert_close(ours, ref, rel=1e-5):
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= rel * max(scale, 1.0), f"max abs diff {err:.3g} at output scale {scale:.3g}"


class JointFrameGroupNorm(nn.GroupNorm):
    """GroupNorm over all frames of a [B*F, C, H, W] batch: AnimateDiff v1's spatial ResNet norms."""
    frames = 1

    def forward(self, x):
        bf, c, h, w = x.shape
        video = x.view(bf // self.frames, self.frames, c, h * w).transpose(1, 2)
        return super().forward(video).transpose(1, 2).reshape(bf, c, h, w)


def reference_video_unet(sd_file, motion_file, per_frame_motion_norm=True, joint_frames=None):
    """diffusers UNetMotionModel with weights converted from the same files by diffusers' converters."""
    from diffusers import UNet2DConditionModel, UNetMotionModel
    from diffusers.loaders.single_file_utils import (convert_animatediff_checkpoint_to_diffusers,
                                                     convert_ldm_unet_checkpoint)
    unet2d = UNet2DConditionModel(**TINY_UNET)
    unet2d.load_state_dict(convert_ldm_unet_checkpoint(sd_file, unet2d.config))
    mid = any(k.startswith("mid_block.") for k in motion_file)
    pe = [v for k, v in motion_file.items() if k.endswith("pos_encoder.pe")]
    adapter = tiny_motion_adapter(mid=mid, max_len=pe[0].shape[1] if pe else 32)
    missing, unexpected = adapter.load_state_dict(convert_animatediff_checkpoint_to_diffusers(motion_file),
                                                  strict=False)
    assert not unexpected and all(k.endswith("pos_embed.pe") for k in missing)
    ref = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    for m in ref.modules():
        if per_frame_motion_norm and type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
        if joint_frames and type(m).__name__ == "ResnetBlock2D":
            for norm in (m.norm1, m.norm2):
                norm.__class__, norm.frames = JointFrameGroupNorm, joint_frames
    if joint_frames:
        ref.conv_norm_out.__class__, ref.conv_norm_out.frames = JointFrameGroupNorm, joint_frames
    return ref


def run_reference(ref, x, t, context):
    # diffusers' UNetMotionModel expects the text repeated once per frame (its pipeline does this).
    with torch.no_grad():
        return ref(x, t, context.repeat_interleave(x.shape[2], dim=0)).sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet")
    sd = ldm_unet_file_state(tiny_diffusers_unet())
    save_safetensors(sd, d / "sd15.safetensors")
    torch.save({"state_dict": sd, "global_step": 5}, d / "sd15.ckpt")
    return d, sd


def test_unet2d_equals_diffusers_from_single_file(files):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    d, sd = files
    ref = UNet2DConditionModel(**TINY_UNET).eval()
    ref.load_state_dict(convert_ldm_unet_checkpoint(sd, ref.config))
    for path in (d / "sd15.safetensors", d / "sd15.ckpt"):
        ours = load_unet(path, **TINY_HEADS).eval()
        x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([3, 801]), torch.randn(2, 7, 32)
        with torch.no_grad():
            assert_close(ours(x, t, c), ref(x, t, c).sample)
        # odd latent sizes take the "upsample to the skip's size" path
        x = torch.randn(1, 4, 13, 11)
        with torch.no_grad():
            assert_close(ours(x, 500, c[:1]), ref(x, 500, c[:1]).sample)


def test_unet2d_from_diffusers_folder(files, tmp_path):
    ref = tiny_diffusers_unet(seed=3)
    ref.save_pretrained(tmp_path / "pipe" / "unet")
    ours = load_unet(tmp_path / "pipe").eval()  # head count and groups from the folder's config.json
    assert (ours.cfg.attention_heads, ours.cfg.norm_groups) == (4, 8)
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert_close(ours(x, 250, c), ref(x, 250, c).sample)


MOTION_VERSIONS = {  # layout: (mid block, pe length in the file or None, frame norm)
    "animatediff_v1": (False, 24, "joint"), "animatediff_v2": (True, 32, "per_frame"),
    "animatediff_v3": (False, 32, "per_frame"), "animatelcm_t2v": (True, None, "per_frame")}


@pytest.mark.parametrize("version", MOTION_VERSIONS)
def test_unet3d_equals_diffusers_per_version(files, tmp_path, version):
    d, sd = files
    mid, pe_length, frame_norm = MOTION_VERSIONS[version]
    motion = original_motion_file_state(tiny_motion_adapter(mid=mid, max_len=pe_length or 32), pe_length)
    torch.save(motion, tmp_path / "mm.ckpt")
    ours = load_unet(d / "sd15.safetensors", tmp_path / "mm.ckpt", **TINY_HEADS).eval()
    assert ours.cfg.frame_norm == frame_norm and ours.cfg.motion_mid_block == mid
    frames = 6
    ref = reference_video_unet(sd, motion, joint_frames=frames if frame_norm == "joint" else None)
    x, t, c = torch.randn(2, 4, frames, 16, 16), torch.tensor([19, 999]), torch.randn(2, 7, 32)
    with torch.no_grad():
        out = ours(x, t, c)
    assert_close(out, run_reference(ref, x, t, c))


def test_motion_norm_trap_is_real(files):
    """Without the per-frame motion norm the diffusers reference computes something else."""
    d, sd = files
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    ours = load_unet(sd, motion, **TINY_HEADS).eval()
    x, c = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        diff = (ours(x, 500, c) - run_reference(reference_video_unet(sd, motion, False), x, 500, c)).abs().max()
    assert diff > 1e-2


def test_diffusers_motion_adapter_layout_loads_the_same(files, tmp_path):
    d, sd = files
    adapter = tiny_motion_adapter()
    adapter.save_pretrained(tmp_path / "adapter")
    original = original_motion_file_state(adapter, None)
    a = load_unet(sd, tmp_path / "adapter", attention_heads=4, norm_groups=8)  # motion heads from config.json
    assert a.cfg.motion_heads == 4
    b = load_unet(sd, original, **TINY_HEADS)
    assert a.cfg.motion_max_frames == 32 and b.cfg.motion_max_frames == 64  # AnimateLCM computes 64
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_wrapped_and_prefixed_motion_files(files, tmp_path):
    d, sd = files
    motion = original_motion_file_state(tiny_motion_adapter(), 32)
    torch.save({"state_dict": {"module." + k: v for k, v in motion.items()}}, tmp_path / "m.ckpt")
    state, cfg = read_motion_module(tmp_path / "m.ckpt")
    assert cfg.version == "animatediff_v2" and cfg.max_frames == 32
    assert not any("pos_encoder" in k or k.startswith("module.") for k in state)


def test_frames_beyond_the_window_get_a_clear_error(files):
    d, sd = files
    ours = load_unet(sd, original_motion_file_state(tiny_motion_adapter(max_len=24), 24), **TINY_HEADS)
    with pytest.raises(ValueError, match="window of 24 frames.*context"):
        ours(torch.randn(1, 4, 25, 8, 8), 1, torch.randn(1, 7, 32))


def test_image_input_skips_motion_modules(files):
    d, sd = files
    video = load_unet(sd, original_motion_file_state(tiny_motion_adapter(), None), **TINY_HEADS).eval()
    image = load_unet(sd, **TINY_HEADS).eval()
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert torch.equal(video(x, 10, c), image(x, 10, c))


def test_half_precision_runs_close_to_fp32(files):
    d, sd = files
    ours = load_unet(sd, original_motion_file_state(tiny_motion_adapter(), None), **TINY_HEADS).eval()
    x, c = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        ref = ours(x, 10, c)
        low = ours.to(torch.bfloat16)(x.bfloat16(), 10, c.bfloat16()).float()
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients(files):
    d, sd = files
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    grads = []
    for checkpointing in (False, True):
        ours = load_unet(sd, motion, **TINY_HEADS).train()
        ours.enable_gradient_checkpointing(checkpointing)
        torch.manual_seed(0)
        ours(torch.randn(1, 4, 3, 8, 8), 10, torch.randn(1, 7, 32)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ---- full-size key/shape coverage: the real formats map onto exactly our parameters (no weights)

def meta_unet(cfg: UNetConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_sd15_single_file_keys_cover_our_unet_exactly():
    ldm = manifest_state("sd15_ldm_single_file")
    ours = read_sd15_unet(ldm)
    assert UNetConfig.from_state_dict(ours) == UNetConfig.sd15()
    assert shapes(ours) == meta_unet(UNetConfig.sd15())
    # and back again, to the very same names
    unet_part = {k: v for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    back = unet_to_ldm(ours, 4, 2, (True, True, True, False))
    assert shapes({"model.diffusion_model." + k: v for k, v in back.items()}) == shapes(unet_part)


def test_sd15_diffusers_unet_keys_are_our_names():
    state = manifest_state("sd15_diffusers_unet")
    assert shapes(read_sd15_unet(state)) == meta_unet(UNetConfig.sd15())


@pytest.mark.parametrize("manifest,version,mid,frames,norm", [
    ("animatediff_mm_sd_v15", "animatediff_v1", False, 24, "joint"),
    ("animatediff_mm_sd_v15_v2", "animatediff_v2", True, 32, "per_frame"),
    ("animatediff_v3_sd15_mm", "animatediff_v3", False, 32, "per_frame"),
    ("animatelcm_sd15_t2v", "animatelcm_t2v", True, 64, "per_frame"),
    ("animatelcm_sd15_i2v", "animatelcm_i2v", True, 64, "per_frame"),
    ("diffusers_motion_adapter", "animatediff_v2", True, 32, "per_frame"),
])
def test_motion_module_keys_cover_our_motion_modules_exactly(manifest, version, mid, frames, norm):
    state, motion = read_motion_module(manifest_state(manifest))
    assert (motion.version, motion.mid_block, motion.max_frames, motion.frame_norm) == (version, mid, frames, norm)
    cfg = UNetConfig.sd15().with_motion(motion)
    expected = {k: v for k, v in meta_unet(cfg).items() if "motion_modules." in k or k.startswith("img_encoder.")}
    assert shapes(state) == expected


def test_motion_layout_round_trip():
    state = manifest_state("diffusers_motion_adapter")
    no_pe = {k: v for k, v in state.items() if "pos_embed" not in k}
    assert shapes(motion_to_diffusers(motion_from_diffusers(no_pe))) == shapes(no_pe)


# ---- bad input: every wrong file gets a clear CheckpointError, never a bare KeyError

def test_truncated_safetensors(files, tmp_path):
    data = (files[0] / "sd15.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_unet(tmp_path / "cut.safetensors", **TINY_HEADS)


def test_sdxl_file_is_named_as_such():
    sdxl = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1),
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="SDXL"):
        load_unet(sdxl)


def test_motion_module_passed_as_sd15_and_back(files):
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    with pytest.raises(CheckpointError, match="motion module.*--motion"):
        load_unet(motion)
    with pytest.raises(CheckpointError, match="not a motion module"):
        load_unet(files[1], files[1], **TINY_HEADS)


def test_wrong_shapes_and_missing_keys_are_listed(files):
    d, sd = files
    bad = dict(sd)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    bad[key] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shape: down_blocks\.0\.attentions\.0\.proj_in\.weight"):
        load_unet(bad, **TINY_HEADS)
    del bad[key]
    with pytest.raises(CheckpointError, match=r"1 missing: down_blocks\.0\.attentions\.0\.proj_in\.weight"):
        load_unet(bad, **TINY_HEADS)
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    motion["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_unet(sd, motion, **TINY_HEADS)


class Exploit:
    def __reduce__(self):
        import os
        return os.system, ("touch /tmp/animatelcm_pwned",)


def test_malicious_pickle_is_refused(tmp_path):
    import os
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"model.diffusion_model.conv_in.weight": Exploit()}}, f)
    with pytest.raises(CheckpointError, match="could run arbitrary code"):
        load_unet(path)
    assert not os.path.exists("/tmp/animatelcm_pwned")


@pytest.mark.slow
def test_full_size_video_unet_equals_diffusers():
    """SD1.5-size UNet with AnimateLCM-layout motion modules, random weights, 2 frames of 16x16 latents."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from conftest import load_manifest
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**load_manifest("sd15_diffusers_unet")["config"])
    adapter = MotionAdapter(**load_manifest("diffusers_motion_adapter")["config"])
    ref = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    for m in ref.modules():
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
    with torch.no_grad():  # zero-initialised proj_out would hide the motion modules
        for name, p in ref.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.02)
    state = ref.state_dict()  # spatial part in diffusers names, motion part in MotionAdapter names
    spatial = {k: v for k, v in state.items() if "motion_modules" not in k}
    ours = load_unet(spatial, {k: v for k, v in state.items() if "motion_modules" in k}).eval()
    x, c = torch.randn(1, 4, 2, 16, 16), torch.randn(1, 77, 768)
    with torch.no_grad():
        assert_close(ours(x, 500, c), run_reference(ref, x, 500, c))
