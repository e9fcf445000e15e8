"""Whole text-to-video pipeline: ours vs diffusers' AnimateDiffPipeline + LCMScheduler, same weights.

    python -m benchmarks.bench_pipeline                 # tiny random models, CPU
    python -m benchmarks.bench_pipeline --frames 16 --size 128 --steps 4 --guidance 1.5
    python -m benchmarks.bench_pipeline --model sd15 --size 512 --device cuda --dtype fp16   # full size

Both pipelines are built from the same random weights (tiny: tests/tiny.py; sd15: SD1.5-sized UNet,
AnimateDiff-v2-sized motion module, SD VAE and CLIP ViT-L/14 text tower), run in one process, alternating;
the script prints each one's median wall time (text encoding + sampling + decoding), the ratio
ours/diffusers (below 1 = ours faster) and each one's peak extra memory. Needs requirements-dev.txt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_unet import PeakMemory, timed
from pipeline import Request, generate
from runtime import cli
from runtime.weights import HINTS_KEY, save_safetensors
from sd15 import load_sd15
from tests.tiny import (PerFrameGroupNorm, hf_clip_tokenizer, original_motion_file_state, sd15_file_state,
                        tiny_reference_parts)


def sd15_reference_parts():
    """Full-size random diffusers/transformers parts: SD1.5 UNet, v2 motion adapter, SD VAE, CLIP-L text."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    adapter = MotionAdapter(use_motion_mid_block=True)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    return unet2d.eval(), adapter, vae.eval(), text.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="video height = width in pixels")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="all models, both pipelines")
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    from diffusers import AnimateDiffPipeline, LCMScheduler
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    folder = Path(tempfile.mkdtemp())
    if args.model == "tiny":
        unet2d, adapter, vae, text = tiny_reference_parts()
        hints = {"unet": {"attention_heads": 4, "motion_heads": 4, "norm_groups": 8}, "vae": {"norm_groups": 8},
                 "text_encoder": {"heads": 4}}
        save_safetensors(sd15_file_state(unet2d, vae, text), folder / "sd15.safetensors", {HINTS_KEY: hints})
        save_safetensors(original_motion_file_state(adapter, None), folder / "motion.safetensors")
        ours = load_sd15(folder / "sd15.safetensors", folder / "motion.safetensors")
    else:  # full size, random weights; ours loads the same tensors through its key maps (in memory)
        unet2d, adapter, vae, text = sd15_reference_parts()
        ours = load_sd15(sd15_file_state(unet2d, vae, text), original_motion_file_state(adapter, None))
    ours.unet.to(args.device, dtype), ours.vae.to(args.device, dtype), ours.text_encoder.to(args.device)
    theirs = AnimateDiffPipeline(vae=vae, text_encoder=text, tokenizer=hf_clip_tokenizer(folder), unet=unet2d,
                                 motion_adapter=adapter, scheduler=LCMScheduler(
                                     beta_schedule="linear", original_inference_steps=100)).to(args.device, dtype)
    for m in theirs.unet.modules():
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.norm.__class__ = PerFrameGroupNorm
    theirs.set_progress_bar_config(disable=True)
    prompt = "a red circle moving left"
    request = Request(prompt=prompt, frames=args.frames, height=args.size, width=args.size, steps=args.steps,
                      guidance=args.guidance, progress=False)

    runs = {"ours": lambda: generate(ours, request),
            "diffusers": lambda: theirs(prompt=prompt, num_frames=args.frames, height=args.size, width=args.size,
                                        num_inference_steps=args.steps, guidance_scale=args.guidance,
                                        output_type="pt", generator=torch.Generator().manual_seed(0))}
    for run in runs.values():
        run()  # warm-up
    times, peaks = {k: [] for k in runs}, {k: 0 for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            with PeakMemory(args.device) as mem, torch.no_grad():
                times[name].append(timed(run, args.device))
            peaks[name] = max(peaks[name], mem.peak)
    o, t = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU {torch.get_num_threads()} threads"
    print(f"{args.model} text-to-video, {args.frames} frames {args.size}x{args.size}, {args.steps} LCM steps, "
          f"guidance {args.guidance}, {args.dtype}, {where}, median of {args.repeats}")
    print(f"ours {o * 1e3:.1f} ms  diffusers {t * 1e3:.1f} ms  ratio {o / t:.3f}   peak extra memory "
          f"ours {peaks['ours'] / 2**20:.1f} MiB  diffusers {peaks['diffusers'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(cli.run(main))
