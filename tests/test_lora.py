"""LoRA: kohya and peft files load, merge and unmerge exactly as diffusers fuses them."""
import pytest
import torch
from torch import nn

from conftest import load_manifest, manifest_state
from test_unet import assert_close, reference_video_unet, run_reference
from tiny import (TINY_HEADS, ldm_unet_file_state, original_motion_file_state, tiny_diffusers_unet,
                  tiny_motion_adapter)
from unet.config import UNetConfig
from unet.load import load_unet
from unet.lora import LoRANetwork, kohya_from_peft, lora_targets
from unet.model import UNet
from runtime.weights import CheckpointError, save_safetensors


def random_kohya_lora(unet, rank=4, alpha=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, base in lora_targets(unet).items():
        if isinstance(base, nn.Linear):
            down, up = (rank, base.in_features), (base.out_features, rank)
        else:
            down, up = (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
        state[f"{name}.lora_down.weight"] = 0.1 * torch.randn(down, generator=g)
        state[f"{name}.lora_up.weight"] = 0.1 * torch.randn(up, generator=g)
        state[f"{name}.alpha"] = torch.tensor(alpha)
    return state


def fuse_into_reference(ref, path, scale):
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader
    state, alphas = Loader.lora_state_dict(str(path))
    Loader.load_lora_into_unet(state, alphas, ref, adapter_name="test")
    ref.fuse_lora(lora_scale=scale)
    return ref


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    sd = ldm_unet_file_state(tiny_diffusers_unet())
    ours = load_unet(sd, **TINY_HEADS)
    save_safetensors(random_kohya_lora(ours), d / "kohya.safetensors")
    return d, sd


def test_kohya_lora_2d_merged_and_unmerged_equal_diffusers_fused(setup):
    d, sd = setup
    ref = fuse_into_reference(tiny_diffusers_unet(), d / "kohya.safetensors", 0.8)
    ours = load_unet(sd, **TINY_HEADS).eval()
    lora = LoRANetwork.load(ours, d / "kohya.safetensors", multiplier=0.8)
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        expected = ref(x, 100, c).sample
        assert_close(ours(x, 100, c), expected)  # unmerged: hooks
        lora.merge()
        assert_close(ours(x, 100, c), expected)


def test_kohya_lora_on_video_unet_equals_diffusers_fused(setup):
    d, sd = setup
    motion = original_motion_file_state(tiny_motion_adapter(), None)
    ref = fuse_into_reference(reference_video_unet(sd, motion), d / "kohya.safetensors", 1.0)
    ours = load_unet(sd, motion, **TINY_HEADS).eval()
    LoRANetwork.load(ours, d / "kohya.safetensors").merge()
    x, c = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert_close(ours(x, 600, c), run_reference(ref, x, 600, c))


def test_peft_lora_without_alpha_equals_diffusers(setup, tmp_path):
    """peft names and no alpha anywhere: scale 1 (alpha = rank), as diffusers reads it."""
    d, sd = setup
    ours = load_unet(sd, **TINY_HEADS).eval()
    paths = {"lora_unet_" + p.replace(".", "_"): p for p, _ in ours.named_modules()}
    peft = {}
    for key, value in random_kohya_lora(ours, rank=4, alpha=2.0, seed=5).items():
        name, kind = key.split(".", 1)
        if kind != "alpha":
            peft[f"unet.{paths[name]}.lora_{'A' if 'down' in kind else 'B'}.weight"] = value
    save_safetensors(peft, tmp_path / "peft.safetensors")
    ref = fuse_into_reference(tiny_diffusers_unet(), tmp_path / "peft.safetensors", 1.0)
    LoRANetwork.load(ours, tmp_path / "peft.safetensors").merge()
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert_close(ours(x, 100, c), ref(x, 100, c).sample)


def test_peft_lora_written_by_diffusers_with_alpha_metadata(setup, tmp_path):
    """A LoRA saved by diffusers' own save_lora_weights (peft names, alpha in the metadata)."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader
    from peft.utils import get_peft_model_state_dict
    d, sd = setup
    ref = tiny_diffusers_unet()
    state, alphas = Loader.lora_state_dict(str(d / "kohya.safetensors"))
    Loader.load_lora_into_unet(state, alphas, ref, adapter_name="test")
    Loader.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(ref, adapter_name="test"),
                             unet_lora_adapter_metadata=ref.peft_config["test"].to_dict())
    ref.fuse_lora(lora_scale=1.0)
    ours = load_unet(sd, **TINY_HEADS).eval()
    LoRANetwork.load(ours, tmp_path / "pytorch_lora_weights.safetensors").merge()
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert_close(ours(x, 100, c), ref(x, 100, c).sample)


def test_merge_unmerge_restores_base_and_multiplier_scales(setup):
    d, sd = setup
    ours = load_unet(sd, **TINY_HEADS).eval()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    lora = LoRANetwork.load(ours, d / "kohya.safetensors", multiplier=0.5)
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        base = UNet(ours.cfg).eval()
        base.load_state_dict(before)
        half = ours(x, 7, c) - base(x, 7, c)
        lora.set_multiplier(1.0)
        full = ours(x, 7, c) - base(x, 7, c)
    assert half.abs().max() > 1e-3
    lora.merge()
    assert any(not torch.equal(before[k], v) for k, v in ours.state_dict().items())
    lora.unmerge()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)
    assert (full - 2 * half).abs().max() < 0.5 * half.abs().max()  # roughly linear at small scale


def test_new_lora_is_identity_and_only_it_trains(setup):
    d, sd = setup
    ours = load_unet(sd, **TINY_HEADS).eval()
    ours.requires_grad_(False)
    lora = LoRANetwork.create(ours, rank=2)
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    base = ours(x, 7, c).detach()
    with torch.no_grad():
        lora.detach()
        assert torch.equal(ours(x, 7, c), base)
        lora.attach()
    ours(x, 7, c).square().mean().backward()
    assert all(p.grad is None for p in ours.parameters())
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_down" in n)


def test_save_round_trip_in_kohya_names(setup, tmp_path):
    d, sd = setup
    ours = load_unet(sd, **TINY_HEADS)
    lora = LoRANetwork.load(ours, d / "kohya.safetensors")
    lora.save(tmp_path / "out.safetensors", dtype=torch.float32, metadata={"rank": 4})
    from safetensors.torch import load_file
    again = load_file(str(tmp_path / "out.safetensors"))
    original = load_file(str(d / "kohya.safetensors"))
    assert set(again) == set(original)
    for k in original:
        assert torch.equal(again[k], original[k])


def test_unknown_layer_names_fail_loudly(setup):
    d, sd = setup
    ours = load_unet(sd, **TINY_HEADS)
    bad = {"lora_unet_time_embedding_linear_9.lora_down.weight": torch.zeros(2, 4),
           "lora_unet_time_embedding_linear_9.lora_up.weight": torch.zeros(4, 2)}
    with pytest.raises(CheckpointError, match="no layer of that name"):
        LoRANetwork.load(ours, bad)
    with pytest.raises(CheckpointError, match="not a UNet LoRA"):
        LoRANetwork.load(ours, {"model.diffusion_model.conv_in.weight": torch.zeros(1)})


def test_full_size_lora_formats_name_exactly_our_target_layers():
    """The AnimateLCM/LCM-LoRA kohya manifest and the peft manifest address exactly our 278 layers."""
    with torch.device("meta"):
        unet = UNet(UNetConfig.sd15())
    targets = lora_targets(unet)
    kohya = manifest_state("animatelcm_sd15_t2v_lora")
    assert {k.split(".")[0] for k in kohya} == set(targets) and len(targets) == 278
    rank = load_manifest("animatelcm_sd15_t2v_lora")["assumed_rank"]
    for name, base in targets.items():
        shape = base.weight.shape
        assert kohya[f"{name}.lora_down.weight"].shape == (rank, shape[1], *shape[2:])
        assert kohya[f"{name}.lora_up.weight"].shape[:2] == (shape[0], rank)
    peft = kohya_from_peft(manifest_state("lcm_lora_sdv15_peft"), {})
    assert {k: v.shape for k, v in peft.items() if not k.endswith("alpha")} == \
        {k: v.shape for k, v in kohya.items() if not k.endswith("alpha")}
