"""ControlNet equals diffusers' ControlNetModel on the same weights, read from the ControlNet-1.1 and
diffusers layouts; its residuals steer our UNet exactly as diffusers' UNets take them."""
import pytest
import torch

from conftest import load_manifest, manifest_state
from test_unet import assert_close, reference_video_unet, run_reference
from tiny import (TINY_HEADS, TINY_UNET, ldm_unet_file_state, original_motion_file_state, randomize,
                  tiny_diffusers_unet, tiny_motion_adapter)
from unet.config import UNetConfig
from unet.controlnet import (SD15_HINT_CHANNELS, ControlNet, controlnet_architecture, controlnet_state_to_ldm,
                             load_controlnet, read_controlnet)
from unet.load import load_unet
from runtime.weights import CheckpointError, save_safetensors

# Four hint widths, like SD1.5's (16, 32, 96, 256): control images are 8x the latent size and the
# LDM indices (input_hint_block.0 ... 14) are the real ones, which diffusers' converter hard-codes.
TINY_HINT = (8, 16, 16, 32)
TINY_CONTROLNET = dict({k: v for k, v in TINY_UNET.items() if k not in ("sample_size", "out_channels",
                                                                        "up_block_types")},
                       conditioning_embedding_out_channels=TINY_HINT)
HEADS = dict(attention_heads=4, norm_groups=8)


def tiny_diffusers_controlnet(seed: int = 5):
    from diffusers import ControlNetModel
    torch.manual_seed(seed)
    return randomize(ControlNetModel(**TINY_CONTROLNET), seed)


def run_ref(ref, x, t, c, control, scale=1.0):
    with torch.no_grad():
        down, mid = ref(x, t, c, control, conditioning_scale=scale, return_dict=False)
    return list(down), mid


def assert_residuals_close(ours, ref):
    (down, mid), (ref_down, ref_mid) = ours, ref
    assert len(down) == len(ref_down) == 6  # conv_in + 3 per level, less the last downsampler
    for a, b in zip(down + [mid], ref_down + [ref_mid]):
        assert a.shape == b.shape
        assert_close(a, b)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The reference ControlNet, and its tensors written as a ControlNet-1.1 .pth and .safetensors."""
    d = tmp_path_factory.mktemp("controlnet")
    ref = tiny_diffusers_controlnet()
    ldm = controlnet_state_to_ldm(load_controlnet(ref.state_dict(), **HEADS))
    torch.save(ldm, d / "control_v11_tiny.pth")
    save_safetensors(ldm, d / "control_v11_tiny.safetensors")
    return d, ref, ldm


def test_ldm_file_is_what_diffusers_converter_reads(files):
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    _, ref, ldm = files
    assert all(k.startswith("control_model.") for k in ldm) and "control_model.input_hint_block.14.weight" in ldm
    converted = convert_controlnet_checkpoint(ldm, ref.config)
    expected = ref.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", ["control_v11_tiny.pth", "control_v11_tiny.safetensors"])
def test_controlnet_equals_diffusers_from_ldm_file(files, name):
    d, ref, _ = files
    ours = load_controlnet(d / name, **HEADS).eval()
    assert ours.hint_channels == TINY_HINT
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([3, 801]), torch.randn(2, 7, 32)
    control = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert_residuals_close(ours(x, t, c, control, scale=0.7), run_ref(ref, x, t, c, control, 0.7))
        x, control = torch.randn(1, 4, 13, 11), torch.rand(1, 3, 104, 88)  # odd latent sizes
        assert_residuals_close(ours(x, 500, c[:1], control), run_ref(ref, x, 500, c[:1], control))


def test_controlnet_from_diffusers_folder(tmp_path):
    ref = tiny_diffusers_controlnet(seed=7)
    ref.save_pretrained(tmp_path / "pipe" / "controlnet")
    ours = load_controlnet(tmp_path / "pipe").eval()  # heads and groups from the folder's config.json
    assert (ours.cfg.attention_heads, ours.cfg.norm_groups) == (4, 8)
    x, c, control = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 32), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert_residuals_close(ours(x, 250, c, control), run_ref(ref, x, 250, c, control))


def test_unet_with_residuals_equals_diffusers(files):
    _, controlnet, _ = files
    ref = tiny_diffusers_unet()
    ours = load_unet(ldm_unet_file_state(ref), **TINY_HEADS).eval()
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([7, 600]), torch.randn(2, 7, 32)
    control = torch.rand(2, 3, 128, 128)
    down, mid = run_ref(controlnet, x, t, c, control)
    with torch.no_grad():
        out = ours(x, t, c, down_residuals=down, mid_residual=mid)
        expected = ref(x, t, c, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        assert_close(out, expected)
        assert (out - ours(x, t, c)).abs().max() > 0.1  # the residuals do change the prediction
        with pytest.raises(ValueError, match="5 down residuals for 6 skip"):
            ours(x, t, c, down_residuals=down[:-1])


def test_video_unet_with_controlnet_equals_diffusers(files):
    """Our video UNet + ControlNet vs diffusers' UNetMotionModel fed by ControlNetModel on folded frames
    (what diffusers' AnimateDiffControlNetPipeline does)."""
    d, controlnet_ref, _ = files
    sd = ldm_unet_file_state(tiny_diffusers_unet())
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    unet = load_unet(sd, motion, **TINY_HEADS).eval()
    controlnet = load_controlnet(d / "control_v11_tiny.pth", **HEADS).eval()
    b, frames = 2, 3
    x, t, c = torch.randn(b, 4, frames, 8, 8), torch.tensor([20, 900]), torch.randn(b, 7, 32)
    control = torch.rand(b, 3, frames, 64, 64)
    with torch.no_grad():
        down, mid = controlnet(x, t, c, control, scale=0.8)
        out = unet(x, t, c, down_residuals=down, mid_residual=mid)
    fold = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731  [B, C, F, ...] -> [B*F, C, ...]
    ref_down, ref_mid = run_ref(controlnet_ref, fold(x), t.repeat_interleave(frames),
                                c.repeat_interleave(frames, dim=0), fold(control), 0.8)
    assert_residuals_close((down, mid), (ref_down, ref_mid))
    ref = reference_video_unet(sd, motion)
    with torch.no_grad():
        expected = ref(x, t, c.repeat_interleave(frames, dim=0), down_block_additional_residuals=ref_down,
                       mid_block_additional_residual=ref_mid).sample
    assert_close(out, expected)
    assert (out - run_reference(ref, x, t, c)).abs().max() > 0.1


def test_video_residuals_are_per_frame_image_residuals(files):
    d, _, _ = files
    ours = load_controlnet(d / "control_v11_tiny.safetensors", **HEADS).eval()
    b, frames = 2, 4
    x, c, control = torch.randn(b, 4, frames, 8, 8), torch.randn(b, 7, 32), torch.rand(b, 3, frames, 64, 64)
    with torch.no_grad():
        down, mid = ours(x, torch.tensor([10, 700]), c, control)
        for f in range(frames):
            image_down, image_mid = ours(x[:, :, f], torch.tensor([10, 700]), c, control[:, :, f])
            for video, image in zip(down + [mid], image_down + [image_mid]):
                assert video.shape[0] == b * frames
                assert_close(video.view(b, frames, *video.shape[1:])[:, f], image)
        with pytest.raises(ValueError, match="do not fit"):
            ours(x, 10, c, control[..., :32, :32])


def test_from_unet_copies_the_encoder_and_starts_at_zero(files):
    sd = ldm_unet_file_state(tiny_diffusers_unet())
    unet = load_unet(sd, original_motion_file_state(tiny_motion_adapter(), None), **TINY_HEADS).eval()
    net = ControlNet.from_unet(unet, hint_channels=TINY_HINT).eval()
    assert not net.cfg.motion_modules and net.cfg.block_out_channels == unet.cfg.block_out_channels
    unet_state, copied = unet.state_dict(), 0
    for k, v in net.state_dict().items():
        if k.startswith("controlnet_"):
            continue
        assert torch.equal(v, unet_state[k]), k
        copied += 1
    assert copied == len([k for k in unet_state if k.startswith(("conv_in.", "time_embedding.", "down_blocks.",
                                                                 "mid_block.")) and "motion_modules" not in k])
    x, c, control = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 32), torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        down, mid = net(x, 300, c, control)
        assert all(not r.any() for r in down + [mid])
        assert torch.equal(unet(x, 300, c, down_residuals=down, mid_residual=mid), unet(x, 300, c))


# ---- full-size key/shape coverage: the real formats map onto exactly our parameters (no weights)

def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def meta_controlnet() -> ControlNet:
    with torch.device("meta"):
        return ControlNet(UNetConfig.sd15())


def test_controlnet_v11_keys_cover_our_controlnet_exactly():
    ldm = manifest_state("controlnet_v11_sd15_ldm")
    ours, _, _ = read_controlnet(ldm)
    cfg, conditioning_channels, hint = controlnet_architecture(ours)
    assert (cfg, conditioning_channels, hint) == (UNetConfig.sd15(), 3, SD15_HINT_CHANNELS)
    assert shapes(ours) == shapes(meta_controlnet().state_dict())
    assert shapes(controlnet_state_to_ldm(meta_controlnet())) == shapes(ldm)  # and back to the same names
    # every single key goes where the manifest's `maps_to` (checked against diffusers) says
    names = list(ldm)
    renamed, _, _ = read_controlnet({k: torch.tensor(i) for i, k in enumerate(names)})
    assert {names[int(v)]: "controlnet/" + k for k, v in renamed.items()} == load_manifest(
        "controlnet_v11_sd15_ldm")["maps_to"]


def test_controlnet_diffusers_keys_are_our_names():
    ours, _, _ = read_controlnet(manifest_state("controlnet_diffusers"))
    assert shapes(ours) == shapes(meta_controlnet().state_dict())
    config = load_manifest("controlnet_diffusers")["config"]
    assert controlnet_architecture(ours)[2] == tuple(config["conditioning_embedding_out_channels"])


# ---- bad input: a clear CheckpointError naming what is wrong

def test_unet_or_motion_module_passed_as_controlnet(files, tmp_path):
    sd = ldm_unet_file_state(tiny_diffusers_unet())
    save_safetensors(sd, tmp_path / "sd15.safetensors")
    with pytest.raises(CheckpointError, match="SD1.5-style single-file checkpoint, not a ControlNet"):
        load_controlnet(tmp_path / "sd15.safetensors", **HEADS)
    with pytest.raises(CheckpointError, match="motion module.*not a ControlNet"):
        load_controlnet(original_motion_file_state(tiny_motion_adapter(), None))
    tiny_diffusers_unet().save_pretrained(tmp_path / "unet")
    with pytest.raises(CheckpointError, match="UNet without its file prefix, not a ControlNet"):
        load_controlnet(tmp_path / "unet")


def test_wrong_shapes_missing_and_unexpected_keys_are_listed(files):
    _, _, ldm = files
    bad = dict(ldm)
    bad["control_model.zero_convs.1.0.weight"] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shape: controlnet_down_blocks\.1\.weight"):
        load_controlnet(bad, **HEADS)
    bad = {k: v for k, v in ldm.items() if k != "control_model.middle_block_out.0.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing: controlnet_mid_block\.bias"):
        load_controlnet(bad, **HEADS)
    with pytest.raises(CheckpointError, match=r"1 unexpected: zero_convs\.7\.0\.weight"):
        load_controlnet({**ldm, "control_model.zero_convs.7.0.weight": torch.zeros(1)}, **HEADS)
    no_mid = {k: v for k, v in ldm.items() if ".middle_block.1." not in k}
    with pytest.raises(CheckpointError, match="not look like a complete SD1.5 ControlNet"):
        load_controlnet(no_mid, **HEADS)
