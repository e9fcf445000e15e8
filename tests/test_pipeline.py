"""End to end: our text-to-video equals diffusers' AnimateDiffPipeline + LCMScheduler on the same files, and
our video-to-video with --strength-convention diffusers its AnimateDiffVideoToVideoPipeline."""

import pytest
import torch

from conftest import FIXTURES
from pipeline import Request, check_request, generate, request_timesteps
from runtime.weights import HINTS_KEY, save_safetensors
from sd15 import load_sd15
from test_lora import random_kohya_lora
from test_sampler import diffusers_kept
from tiny import (PerFrameGroupNorm, hf_clip_tokenizer, original_motion_file_state, sd15_file_state,
                  tiny_reference_parts)

HINTS = {"unet": {"attention_heads": 4, "motion_heads": 4, "norm_groups": 8}, "vae": {"norm_groups": 8},
         "text_encoder": {"heads": 4}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    unet2d, adapter, vae, text = tiny_reference_parts()
    save_safetensors(sd15_file_state(unet2d, vae, text), d / "sd15.safetensors", {HINTS_KEY: HINTS})
    save_safetensors(original_motion_file_state(adapter, None), d / "motion.safetensors",
                     {HINTS_KEY: {"motion": {"motion_heads": 4}}})
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors")
    save_safetensors(random_kohya_lora(ours.unet, rank=4, alpha=2.0), d / "lora.safetensors")
    return d, (unet2d, adapter, vae, text)


def diffusers_scheduler(sampler):
    """diffusers' scheduler for one of our samplers with our defaults (beta_linear, AnimateLCM-T2V's grid)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    if sampler == "lcm":
        return LCMScheduler(**betas, original_inference_steps=100)
    if sampler == "ddim":
        return DDIMScheduler(**betas, clip_sample=False, steps_offset=1)
    return DPMSolverMultistepScheduler(**betas)


def diffusers_pipe(cls, parts, folder, scheduler):
    unet2d, adapter, vae, text = parts
    pipe = cls(vae=vae, text_encoder=text, tokenizer=hf_clip_tokenizer(folder), unet=unet2d, motion_adapter=adapter,
               scheduler=scheduler)
    for m in pipe.unet.modules():  # the official per-frame motion norm (see tests/test_unet.py)
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
    return pipe


def diffusers_video(parts, folder, prompt, negative, guidance, steps, frames, seed, lora=None):
    from diffusers import AnimateDiffPipeline
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader
    pipe = diffusers_pipe(AnimateDiffPipeline, parts, folder, diffusers_scheduler("lcm"))
    if lora:
        state, alphas = Loader.lora_state_dict(str(lora[0]))
        Loader.load_lora_into_unet(state, alphas, pipe.unet, adapter_name="lora")
        pipe.unet.fuse_lora(lora_scale=lora[1])
    out = pipe(prompt=prompt, negative_prompt=negative, num_frames=frames, height=64, width=64,
               num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.frames[0].permute(1, 0, 2, 3)  # [F, 3, H, W] -> [3, F, H, W]


@pytest.mark.parametrize("guidance,lora", [(1.0, False), (1.8, False), (1.5, True)])
def test_text_to_video_equals_diffusers(setup, tmp_path, guidance, lora):
    d, parts = setup
    lora_arg = (d / "lora.safetensors", 0.8) if lora else None
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors", [lora_arg] if lora else [])
    request = Request(prompt="a red circle moving left", negative_prompt="blurry", frames=6, height=64,
                      width=64, steps=4, guidance=guidance, seed=3, progress=False)
    video = generate(ours, request)[0]
    expected = diffusers_video(parts, tmp_path, request.prompt, request.negative_prompt, guidance, 4, 6, 3,
                               lora_arg)
    assert video.shape == expected.shape == (3, 6, 64, 64)
    assert (video - expected).abs().max() < 1e-4
    # and the seed matters
    other = generate(ours, Request(**{**request.__dict__, "seed": 4}))[0]
    assert (other - video).abs().max() > 1e-3


@pytest.mark.parametrize("sampler,strength,guidance", [("lcm", 0.5, 1.0), ("ddim", 0.75, 1.5), ("dpmpp_2m", 0.7, 1.0)])
def test_video_to_video_with_diffusers_convention_equals_diffusers(setup, tmp_path, sampler, strength, guidance):
    from diffusers import AnimateDiffVideoToVideoPipeline
    d, parts = setup
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors")
    source = torch.rand(1, 3, 6, 64, 64, generator=torch.Generator().manual_seed(5))  # [1, 3, F, H, W] in [0, 1]
    request = Request(prompt="a red circle moving left", negative_prompt="blurry", frames=6, height=64, width=64,
                      steps=4, guidance=guidance, seed=3, sampler=sampler, video=source * 2 - 1, strength=strength,
                      strength_convention="diffusers", progress=False)
    video = generate(ours, request)[0]
    pipe = diffusers_pipe(AnimateDiffVideoToVideoPipeline, parts, tmp_path, diffusers_scheduler(sampler))
    expected = pipe(video=source.transpose(1, 2), prompt=request.prompt, negative_prompt=request.negative_prompt,
                    height=64, width=64, num_inference_steps=4, guidance_scale=guidance, strength=strength,
                    output_type="pt", generator=torch.Generator("cpu").manual_seed(3)).frames[0].transpose(0, 1)
    assert video.shape == expected.shape == (3, 6, 64, 64)
    assert (video - expected).abs().max() < 1e-4
    # our default (AnimateLCM's convention) is another video for the same seed
    default = generate(ours, Request(**{**request.__dict__, "strength_convention": "lcm"}))[0]
    assert (default - expected).abs().max() > 1e-3


@pytest.mark.parametrize("sampler,guidance,kind", [("lcm", 1.0, "t2v"), ("ddim", 1.5, "t2v"), ("dpmpp_2m", 1.0, "t2v"),
                                                   ("lcm", 1.0, "v2v"), ("lcm", 1.3, "i2v")])
def test_a_video_does_not_depend_on_the_batch_it_is_drawn_in(setup, sampler, guidance, kind):
    """Each video's noise comes from its own seed: drawn alone, in a batch, or in another order, the same
    video (up to float rounding of batched matrix products)."""
    d, _ = setup
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors")
    prompts, seeds = ["a red circle moving left", "a blue square moving up", "a cat"], [5, 6, 7]
    g = torch.Generator().manual_seed(0)
    extra = {"v2v": {"video": torch.rand(3, 3, 4, 64, 64, generator=g) * 2 - 1},
             "i2v": {"image": torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, "anchor_first_frame": True,
                     "match_colours": False}}.get(kind, {})
    request = Request(prompt=prompts, seed=seeds, frames=4, height=64, width=64, steps=3, sampler=sampler,
                      guidance=guidance, progress=False, **extra)
    batched = generate(ours, request)
    assert batched.shape == (3, 3, 4, 64, 64)
    for i in range(3):
        alone = generate(ours, Request(**{**request.__dict__, "prompt": prompts[i], "seed": seeds[i],
                                          **{k: v[i:i + 1] for k, v in extra.items() if torch.is_tensor(v)}}))[0]
        assert (alone - batched[i]).abs().max() < 1e-5, i
    order = [2, 0, 1]
    shuffled = generate(ours, Request(**{**request.__dict__, "prompt": [prompts[i] for i in order],
                                         "seed": [seeds[i] for i in order],
                                         **{k: v[order] for k, v in extra.items() if torch.is_tensor(v)}}))
    assert (shuffled - batched[order]).abs().max() < 1e-5
    assert (batched[0] - batched[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(ours, Request(**{**request.__dict__, "seed": 5}))


def test_sample_py_writes_the_frames_it_always_wrote(tmp_path):
    """`python sample.py` on the bundled toy model, eight ways (text-, image-, video-to-video, long videos,
    ControlNet; LCM, DDIM, DPM-Solver++): the frames saved from the code before the generation paths were
    joined into pipeline.generate (tests/fixtures/sample_frames.npz), within one level of rounding."""
    import numpy as np
    import sample
    from media.video import read_video, write_video
    from toy.world import clip_from_seed, render
    from PIL import Image
    expected = np.load(FIXTURES / "sample_frames.npz")
    clip = clip_from_seed(123)
    video, masks = render(clip)
    Image.fromarray(video[0]).save(tmp_path / "first.png")
    write_video(video, tmp_path / "source.gif", fps=8)
    write_video(np.repeat(masks[..., None], 3, -1), tmp_path / "control.gif", fps=8)
    weights = sample.ROOT / "toy" / "weights"
    cases = {
        "t2v_lcm4": [],
        "t2v_lcm1_seed3": ["--steps", "1", "--seed", "3", "--prompt", "a blue square moving up"],
        "t2v_ddim4": ["--sampler", "ddim", "--guidance", "4.5", "--prompt", "a green triangle moving down"],
        "t2v_dpmpp4": ["--sampler", "dpmpp_2m", "--guidance", "4.5", "--steps", "4", "--seed", "2"],
        "i2v": ["--image", str(tmp_path / "first.png"), "--prompt", clip.caption],
        "v2v": ["--video", str(tmp_path / "source.gif"), "--strength", "0.6", "--prompt", clip.caption],
        "long": ["--frames", "12", "--context-frames", "8", "--context-overlap", "4"],
        "control": ["--controlnet", str(weights / "toy_layout_controlnet.safetensors"), "--controlnet-lora",
                    str(weights / "toy_layout_controlnet_lora.safetensors"), "--control", str(tmp_path / "control.gif"),
                    "--prompt", clip.caption]}
    assert set(cases) == set(expected.files)
    for name, flags in cases.items():
        assert sample.main(["--upscale", "1", "--out", str(tmp_path / name), *flags]) == 0
        frames = read_video(tmp_path / name)
        assert frames.shape == expected[name].shape, name
        assert np.abs(frames.astype(int) - expected[name]).max() <= 1, name


@pytest.mark.parametrize("steps,strength", [(4, 0.7), (4, 0.5), (4, 0.75), (4, 0.25), (8, 0.6), (3, 0.9), (10, 0.29),
                                            (6, 1.0)])
@pytest.mark.parametrize("sampler", ["lcm", "ddim", "dpmpp_2m"])
def test_kept_steps_match_diffusers(sampler, steps, strength):
    from diffusers import LCMScheduler
    request = Request(prompt="", steps=steps, sampler=sampler, video=torch.zeros(1), strength=strength)
    expected = diffusers_kept(diffusers_scheduler(sampler), steps, strength).tolist()
    assert request_timesteps(Request(**{**request.__dict__, "strength_convention": "diffusers"})) == expected
    assert len(expected) == int(steps * strength)
    if sampler == "lcm":  # ours by default: all steps on the truncated grid, as LCMScheduler(strength=)
        ref = LCMScheduler(original_inference_steps=100)
        ref.set_timesteps(steps, strength=strength)
        assert request_timesteps(request) == ref.timesteps.tolist()
    else:  # DDIM and DPM-Solver++ keep diffusers' steps in both conventions
        assert request_timesteps(request) == expected


def test_timestep_spacing_picks_the_baselines_timesteps():
    """DDIM defaults to AnimateDiff's leading spacing (1 step at t = 1), DPM-Solver++ to linspace; trailing
    starts both at t = 999; LCM takes no spacing (tests/test_sampler.py checks each against diffusers)."""
    def timesteps(sampler, steps, spacing=None):
        return request_timesteps(Request(prompt="", sampler=sampler, steps=steps, timestep_spacing=spacing))
    assert timesteps("ddim", 1) == [1] and timesteps("ddim", 2) == [501, 1] and timesteps("ddim", 4)[0] == 751
    assert timesteps("ddim", 1, "trailing") == [999] and timesteps("ddim", 4, "trailing") == [999, 749, 499, 249]
    assert timesteps("dpmpp_2m", 4) == [999, 749, 500, 250] and timesteps("dpmpp_2m", 2, "trailing") == [999, 499]
    from types import SimpleNamespace
    model = SimpleNamespace(vae=SimpleNamespace(cfg=SimpleNamespace(block_out_channels=(1, 1, 1, 1))),
                            unet=SimpleNamespace(cfg=SimpleNamespace(motion_modules=False)), controlnet=None)
    with pytest.raises(ValueError, match="'trailing' does not apply to the lcm sampler"):
        check_request(model, Request(prompt="", sampler="lcm", timestep_spacing="trailing", height=64, width=64))
    with pytest.raises(ValueError, match="'leading' does not apply to the dpmpp_2m sampler .linspace, trailing."):
        check_request(model, Request(prompt="", sampler="dpmpp_2m", timestep_spacing="leading", height=64, width=64))


def test_non_finite_latents_stop_with_a_message(setup):
    d, _ = setup
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors")
    with torch.no_grad():
        ours.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite latents"):
        generate(ours, Request(prompt="x", frames=2, height=64, width=64, steps=1, progress=False))


def test_requests_are_checked_before_any_work(setup):
    d, _ = setup
    ours = load_sd15(d / "sd15.safetensors", d / "motion.safetensors")
    video = torch.zeros(1, 3, 16, 64, 64)
    for bad, message in ((dict(height=60), "multiples of 8"), (dict(steps=0), "steps must be at least 1"),
                         (dict(guidance=0.9), "guidance must be at least 1"), (dict(frames=70), "window of 64"),
                         (dict(image=torch.zeros(1, 3, 64, 64)), "AnimateLCM-I2V"), (dict(sampler="euler"), "sampler"),
                         (dict(video=video, sampler="ddim", strength=0.2),
                          r"keeps int\(4 \* 0.2\) = 0 of the 4 ddim steps; raise --strength to at least 0.25"),
                         (dict(video=video, strength_convention="comfy"), "strength convention"),
                         (dict(anchor_first_frame=True), "anchoring the first frame needs an image")):
        with pytest.raises(ValueError, match=message):
            generate(ours, Request(**{"prompt": "x", "height": 64, "width": 64, **bad}))
