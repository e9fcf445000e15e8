"""VAE: equality with diffusers' AutoencoderKL, key coverage of real formats, video helpers, bad files."""
import pytest
import torch

from conftest import load_manifest, manifest_state
from vae import AutoencoderKL, VAEConfig, load_vae, vae_from_ldm, vae_to_ldm
from runtime.weights import CheckpointError, read_state_dict, save_safetensors

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

PREFIX = "first_stage_model."


def tiny_reference(layers_per_block: int) -> "diffusers.AutoencoderKL":
    """A seeded tiny diffusers VAE with norms and biases moved away from their 1/0 init."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=layers_per_block, norm_num_groups=32, sample_size=32)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p) if p.ndim == 1 else 0.02 * torch.randn_like(p))
    return ref.eval()


def tolerance(reference: torch.Tensor) -> float:
    return min(1e-4, 1e-5 * max(1.0, reference.abs().max().item()))


@pytest.fixture(scope="module", params=[1, 2], ids=["layers1", "layers2"])
def pair(request, tmp_path_factory):
    """(diffusers reference loaded from an LDM file through diffusers' converter, the file's path)."""
    ref = tiny_reference(request.param)
    path = tmp_path_factory.mktemp("vae") / "sd15_like.safetensors"
    save_safetensors({PREFIX + k: v for k, v in vae_to_ldm(ref.state_dict()).items()}, path)
    converted = convert_ldm_vae_checkpoint(read_state_dict(path), dict(ref.config))
    oracle = diffusers.AutoencoderKL(**ref.config).eval()
    oracle.load_state_dict(converted, strict=True)
    for k, v in ref.state_dict().items():  # our LDM writer is the exact inverse of diffusers' reader
        assert torch.equal(converted[k], v), k
    return oracle, path


def images(b=2, size=32, seed=1):
    return torch.tanh(torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def test_matches_diffusers_from_ldm_file(pair):
    oracle, path = pair
    ours = load_vae(path)
    assert ours.cfg.block_out_channels == (32, 64)
    x = images()
    want = oracle.encode(x).latent_dist
    got = ours.encode(x)
    for a, b in ((got.mean, want.mean), (got.logvar, want.logvar), (got.std, want.std)):
        assert a.shape == b.shape == (2, 4, 16, 16)
        assert (a - b).abs().max() <= tolerance(b)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    want_img = oracle.decode(z).sample
    got_img = ours.decode(z)
    assert got_img.shape == (2, 3, 32, 32)
    assert (got_img - want_img).abs().max() <= tolerance(want_img)
    # Same random draw as diffusers' DiagonalGaussianDistribution.sample(generator).
    assert torch.allclose(got.sample(torch.Generator().manual_seed(3)),
                          want.sample(torch.Generator().manual_seed(3)), atol=tolerance(want.mean))


@torch.no_grad()
def test_diffusers_folder_and_standalone_files_load_identically(pair, tmp):
    oracle, path = pair
    ours = load_vae(path).state_dict()
    oracle.save_pretrained(tmp / "pipeline" / "vae")
    ldm = vae_to_ldm(oracle.state_dict())
    torch.save({"state_dict": {**ldm, "loss.logvar": torch.zeros(())}}, tmp / "vae-ft-mse.ckpt")
    old_names = {k.replace("to_q", "query").replace("to_out.0", "proj_attn"): v
                 for k, v in oracle.state_dict().items()}
    for source in (tmp / "pipeline", tmp / "pipeline" / "vae", tmp / "vae-ft-mse.ckpt", old_names):
        loaded = load_vae(source).state_dict()
        assert loaded.keys() == ours.keys()
        assert all(torch.equal(loaded[k], ours[k]) for k in ours), source


@torch.no_grad()
def test_decode_video_in_chunks_equals_per_frame_decode(pair):
    vae = load_vae(pair[1])
    latents = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(4))
    video = vae.decode_video(latents, chunk_frames=3)
    assert video.shape == (2, 3, 5, 16, 16)
    whole = vae.decode_video(latents, chunk_frames=100)
    per_frame = torch.stack([vae.decode(latents[:, :, t] / vae.cfg.scaling_factor) for t in range(5)], dim=2)
    assert (video - whole).abs().max() <= 1e-5
    assert (video - per_frame).abs().max() <= 1e-5


@torch.no_grad()
def test_encode_video_scales_and_orders_frames(pair):
    vae = load_vae(pair[1])
    frames = torch.stack([images(2, 16, seed=t) for t in range(3)], dim=2)  # [2, 3, 3, 16, 16]
    mode = vae.encode_video(frames, sample=False, chunk_frames=2)
    assert mode.shape == (2, 4, 3, 8, 8)
    for t in range(3):
        want = vae.encode(frames[:, :, t]).mean * 0.18215
        assert (mode[:, :, t] - want).abs().max() <= 1e-5
    a = vae.encode_video(frames, torch.Generator().manual_seed(5), chunk_frames=1)
    b = vae.encode_video(frames, torch.Generator().manual_seed(5), chunk_frames=8)
    assert (a - b).abs().max() <= 1e-5  # the noise does not depend on the chunk size
    assert (a - mode).abs().mean() > 1e-3


def test_full_size_key_coverage():
    ldm_manifest = load_manifest("sd15_ldm_single_file")
    ldm = {k[len(PREFIX):]: v for k, v in manifest_state("sd15_ldm_single_file").items() if k.startswith(PREFIX)}
    assert len(ldm) == 248
    ours = vae_from_ldm(ldm)
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    # Every LDM key goes where the manifest says (maps_to is "vae/<diffusers key>").
    assert len(ours) == len(ldm)
    for ldm_key, our_key in zip(ldm, ours):
        assert ldm_manifest["maps_to"][PREFIX + ldm_key] == "vae/" + our_key
    diffusers_state = manifest_state("sd15_diffusers_vae")
    assert {k: tuple(v.shape) for k, v in diffusers_state.items()} == expected
    assert VAEConfig.from_state_dict(diffusers_state) == VAEConfig()
    back = vae_to_ldm(ours)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ldm.items()}


def test_bad_files_raise_helpful_errors(pair, tmp):
    good = read_state_dict(pair[1])
    data = pair[1].read_bytes()
    (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(tmp / "truncated.safetensors")

    sdxl = {**good, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4)}
    with pytest.raises(CheckpointError, match="SDXL"):
        load_vae(sdxl)

    motion = {"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": torch.ones(4)}
    save_safetensors(motion, tmp / "mm.safetensors")
    with pytest.raises(CheckpointError, match=r"mm\.safetensors is a motion module .*not a VAE"):
        load_vae(tmp / "mm.safetensors")

    unet_only = {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(4)}
    with pytest.raises(CheckpointError, match="without VAE weights"):
        load_vae(unet_only)

    wrong = dict(good)
    wrong[PREFIX + "decoder.conv_out.weight"] = torch.zeros(3, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shape: decoder\.conv_out\.weight"):
        load_vae(wrong)

    missing = {k: v for k, v in good.items() if "mid.attn_1.q." not in k}
    with pytest.raises(CheckpointError, match=r"missing: .*mid_block\.attentions\.0\.to_q"):
        load_vae(missing)

    with pytest.raises(CheckpointError, match="lack encoder.conv_in.weight"):
        load_vae({k: v for k, v in good.items() if "encoder.conv_in" not in k})

    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.extra\.weight"):
        load_vae({**good, PREFIX + "encoder.extra.weight": torch.ones(1)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_decode_is_close(pair, dtype):
    vae = load_vae(pair[1])
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    want = vae.decode_video(latents)
    vae = vae.to(dtype)
    got = vae.decode_video(latents)
    assert got.dtype == dtype
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
    posterior = vae.encode(images(1, 16))
    assert posterior.mean.dtype == dtype and torch.isfinite(posterior.sample()).all()
