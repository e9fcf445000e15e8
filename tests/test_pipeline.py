"""End to end: our text-to-video equals diffusers' AnimateDiffPipeline + LCMScheduler on the same files."""

import pytest
import torch

from pipeline import Request, generate
from sd15 import load_sd15
from test_lora import random_kohya_lora
from test_unet import PerFrameGroupNorm
from tiny import hf_clip_tokenizer, original_motion_file_state, sd15_file_state, tiny_reference_parts
from weights import HINTS_KEY, save_safetensors

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


def diffusers_video(parts, folder, prompt, negative, guidance, steps, frames, seed, lora=None):
    from diffusers import AnimateDiffPipeline, LCMScheduler
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Loader
    unet2d, adapter, vae, text = parts
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                             original_inference_steps=100)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text, tokenizer=hf_clip_tokenizer(folder), unet=unet2d,
                               motion_adapter=adapter, scheduler=scheduler)
    for m in pipe.unet.modules():  # the official per-frame motion norm (see tests/test_unet.py)
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
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
    video = generate(ours, request)
    expected = diffusers_video(parts, tmp_path, request.prompt, request.negative_prompt, guidance, 4, 6, 3,
                               lora_arg)
    assert video.shape == expected.shape == (3, 6, 64, 64)
    assert (video - expected).abs().max() < 1e-4
    # and the seed matters
    other = generate(ours, Request(**{**request.__dict__, "seed": 4}))
    assert (other - video).abs().max() > 1e-3


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
    for bad, message in ((dict(height=60), "multiples of 8"), (dict(steps=0), "steps must be at least 1"),
                         (dict(guidance=0.9), "guidance must be at least 1"), (dict(frames=70), "window of 64"),
                         (dict(image=torch.zeros(1, 3, 64, 64)), "AnimateLCM-I2V"), (dict(sampler="euler"), "sampler")):
        with pytest.raises(ValueError, match=message):
            generate(ours, Request(**{"prompt": "x", "height": 64, "width": 64, **bad}))
