"""Generate a video in a few steps with AnimateLCM.

    python sample.py                                   # the bundled toy model, when present
    python sample.py --sd15 toy/weights/toy_outline_sd15.safetensors   # a personalized toy model, 4 steps
    python sample.py --sd15 v1-5-pruned-emaonly.safetensors --motion AnimateLCM_sd15_t2v.ckpt \\
        --lora AnimateLCM_sd15_t2v_lora.safetensors --prompt "a boat on a calm lake" --out boat.gif
    # image-to-video: the AnimateLCM-I2V motion module (and its LoRA), plus --image first_frame.png
    # video-to-video: --video source.mp4 --strength 0.6
    # longer than the motion module's window: --frames 48 --context-frames 16

--sd15 takes any SD1.5-family checkpoint (single file or diffusers folder), so personalized models
work. Weights are never downloaded: pass the files you have.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from runtime import cli
from runtime.cli import UserError, device_problem
from media.video import output_problem

ROOT = Path(__file__).resolve().parent
TOY = {"sd15": ROOT / "toy" / "weights" / "toy_sd15.safetensors",
       "motion": ROOT / "toy" / "weights" / "toy_motion.safetensors",
       "i2v": ROOT / "toy" / "weights" / "toy_i2v_motion.safetensors",  # with --image
       "lora": ROOT / "toy" / "weights" / "toy_lcm_lora.safetensors",
       "settings": ROOT / "toy" / "weights" / "toy.json"}  # the size and schedule it was trained at
DEFAULTS = {"frames": 16, "height": 512, "width": 512}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

NO_WEIGHTS = """No weights given and no bundled toy model found (toy/weights/).
Pass the files you have, for example:
  python sample.py --sd15 v1-5-pruned-emaonly.safetensors \\
      --motion AnimateLCM_sd15_t2v.ckpt --lora AnimateLCM_sd15_t2v_lora.safetensors \\
      --prompt "a boat on a calm lake, golden hour" --out boat.gif
--sd15: any SD1.5 single file (.safetensors/.ckpt) or diffusers folder; --motion: an AnimateLCM or
AnimateDiff motion module; --lora: the AnimateLCM spatial LoRA (or LCM-LoRA). See README.md."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Few-step text/image/video-to-video with AnimateLCM.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", default="a red circle moving left")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance; 1 = one pass per step")
    p.add_argument("--frames", type=int, default=None, help="default 16 (the toy model: 8)")
    p.add_argument("--height", type=int, default=None, help="default 512 (the toy model: 32)")
    p.add_argument("--width", type=int, default=None, help="default 512 (the toy model: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--upscale", type=int, default=None,
                   help="write the video N times larger, nearest-neighbour; default 8 for the bundled toy model "
                        "(32 -> 256 pixels, viewable), else 1; --upscale 1 writes the native size")
    p.add_argument("--out", default="out.gif", help=".gif, .mp4, .webp, or a folder name for PNG frames")
    p.add_argument("--sd15", help="SD1.5 checkpoint: single file or diffusers folder")
    p.add_argument("--motion", help="motion module: AnimateLCM t2v/i2v, AnimateDiff v1/v2/v3")
    p.add_argument("--lora", action="append", default=[], help="spatial LoRA (repeatable)")
    p.add_argument("--lora-scale", type=float, action="append", default=[],
                   help="multiplier per --lora (default 0.8 each, AnimateLCM's app default)")
    p.add_argument("--sampler", default="lcm", choices=["lcm", "ddim", "dpmpp_2m"])
    p.add_argument("--timestep-spacing", choices=["leading", "trailing", "linspace"], default=None,
                   help="DDIM and DPM-Solver++ only: default leading for DDIM (AnimateDiff's config, the paper's "
                        "baseline: 1 step runs at t = 1), linspace for DPM-Solver++; trailing starts at t = 999")
    p.add_argument("--beta-schedule", default="beta_linear", choices=["beta_linear", "sqrt_beta_linear"],
                   help="see README: AnimateLCM/AnimateDiff use beta_linear")
    p.add_argument("--beta-end", type=float, default=None, help="default 0.012 (AnimateLCM-I2V: 0.014)")
    p.add_argument("--original-steps", type=int, default=None,
                   help="LCM timestep grid; default 100 (AnimateLCM-I2V: 200)")
    p.add_argument("--clip-skip", type=int, default=0)
    p.add_argument("--image", help="image-to-video: the first frame (needs the AnimateLCM-I2V motion module)")
    p.add_argument("--motion-scale", type=float, default=0.8, help="I2V: 0 = still, larger = more motion")
    p.add_argument("--match-colours", type=cli.boolean, default=True,
                   help="I2V: move each frame's mean saturation and brightness onto the image's, as AnimateLCM-I2V "
                        "does (true/false)")
    p.add_argument("--anchor-first-frame", type=cli.boolean, default=None,
                   help="I2V, lcm sampler: replace frame 0 of each intermediate prediction by the image's latent, "
                        "so the first frame keeps the image (not in AnimateLCM-I2V's pipeline; default false, "
                        "the toy model: true, see docs/toy-world.md 6.4)")
    p.add_argument("--video", help="video-to-video: source video file or folder of frames")
    p.add_argument("--strength", type=float, default=0.6, help="V2V: how much of the source is replaced")
    p.add_argument("--strength-convention", default="lcm", choices=["lcm", "diffusers"],
                   help="V2V: lcm = all steps on the truncated LCM grid (AnimateLCM's); diffusers = the last "
                        "int(steps * strength) steps, as AnimateDiffVideoToVideoPipeline (same seed, same video)")
    p.add_argument("--controlnet", help="ControlNet-1.1 SD1.5 file (or diffusers ControlNet folder)")
    p.add_argument("--controlnet-lora", help="a LoRA for the ControlNet, as train_adapter.py writes it")
    p.add_argument("--control", help="control video (file or folder of frames), one image per frame")
    p.add_argument("--control-scale", type=float, default=1.0)
    p.add_argument("--context-frames", type=int, default=None, help="long videos: window length")
    p.add_argument("--context-overlap", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="UNet dtype; default fp16 on GPU, fp32 on CPU")
    p.add_argument("--vae-dtype", choices=DTYPES, default="fp32")
    p.add_argument("--decode-chunk", type=int, default=8, help="frames decoded at once")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """The command line as a function: returns its exit code; a known problem (a bad flag, file or
    output location) is one line on stderr and code 2, before any weights are read (cli.py)."""
    return cli.run(generate_video, argv)


def generate_video(argv=None) -> int:
    args = parse_args(argv)
    defaults = dict(DEFAULTS, upscale=1)
    if args.sd15 is None and not TOY["sd15"].exists():
        print(NO_WEIGHTS)
        return 0
    if args.sd15 is None or is_toy_model(args.sd15):  # the bundled toy model, or a personalized toy model
        toy = use_toy_model(args)
        defaults = {k: toy[k] for k in DEFAULTS}
        defaults["upscale"] = 8
        if args.image is None and args.video is None:  # the toy world speaks one language: check the prompt
            from toy.world import parse_caption
            try:
                parse_caption(args.prompt)
            except ValueError as e:
                raise UserError(f"--prompt: {e}") from e
    for k, v in defaults.items():
        if getattr(args, k) is None:  # an explicit 0 is an error below, not the default
            setattr(args, k, v)
    height, width = args.height, args.width
    check_args(args, height, width)

    from pipeline import Request, generate, request_timesteps
    from sd15 import load_sd15
    from media.video import old_frames, read_image, read_video, resize_crop, to_model, to_uint8, write_video

    # the input images and videos are read (and refused if unreadable) before any weights
    image = to_model(resize_crop(read_image(args.image)[None], height, width))[:, :, 0] if args.image else None
    source = control = None
    if args.video:
        source = read_video(args.video, max_frames=args.frames)
        if len(source) < args.frames:
            raise UserError(f"--video {args.video} has {len(source)} frames, fewer than --frames {args.frames}")
    if args.control:
        control = read_video(args.control, max_frames=args.frames)
        if len(control) < args.frames:
            raise UserError(f"--control {args.control} has {len(control)} frames, fewer than --frames {args.frames}")

    start = time.perf_counter()
    dtype = DTYPES[dtype_name(args)]
    model = load_sd15(args.sd15, args.motion, list(zip(args.lora, lora_scales(args))),
                      device=args.device, dtype=dtype, vae_dtype=DTYPES[args.vae_dtype])
    if args.controlnet:
        from unet.controlnet import load_controlnet
        model.controlnet = load_controlnet(args.controlnet, lora=args.controlnet_lora or None, device=args.device,
                                           dtype=dtype).eval()
    load_time = time.perf_counter() - start

    schedule, original_steps = schedule_and_grid(args, model)
    request = Request(prompt=args.prompt, negative_prompt=args.negative_prompt, frames=args.frames,
                      height=height, width=width, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      sampler=args.sampler, timestep_spacing=args.timestep_spacing, schedule=schedule,
                      original_steps=original_steps, clip_skip=args.clip_skip,
                      motion_scale=args.motion_scale, match_colours=args.match_colours,
                      anchor_first_frame=bool(args.anchor_first_frame), strength=args.strength,
                      strength_convention=args.strength_convention,
                      context_frames=args.context_frames, context_overlap=args.context_overlap,
                      decode_chunk=args.decode_chunk)
    request.image = image
    if source is not None:
        request.video = to_model(resize_crop(source, height, width))
    if control is not None:
        request.control, request.control_scale = (to_model(resize_crop(control, height, width)) + 1) / 2, args.control_scale
    timings = {}
    try:
        video = generate(model, request, timings)[0]  # [3, F, H, W]: one video
    except (ValueError, FloatingPointError) as e:  # the request's checks against the loaded model
        raise UserError(str(e)) from e
    ran = len(request_timesteps(request))  # fewer than --steps where --strength keeps only the last ones
    earlier = old_frames(args.out)
    frames = to_uint8(video).repeat(args.upscale, axis=1).repeat(args.upscale, axis=2)  # nearest-neighbour
    out = write_video(frames, args.out, args.fps)
    size = f"{width}x{height}" + (f", written at {width * args.upscale}x{height * args.upscale}" if args.upscale > 1 else "")
    steps = f"{ran} {args.sampler} steps" if ran == args.steps else \
        f"{ran} of {args.steps} {args.sampler} steps, the last ones (--strength {args.strength})"
    print(f"wrote {out} ({args.frames} frames, {size}, {args.fps} fps, {steps})"
          + (f"; replaced the {len(earlier)} frames of an earlier video there" if earlier else ""))
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in {"load": load_time, **timings}.items()))
    return 0


def is_toy_model(path: str) -> bool:
    """Whether --sd15 is a toy-world image model other than the bundled one (a personalized toy model, such as
    toy/weights/toy_outline_sd15.safetensors): its file's metadata says so."""
    from runtime.weights import CheckpointError, read_metadata
    if not Path(path).is_file():
        return False
    try:
        return "toy_world" in read_metadata(path)  # {} for a file that is not safetensors
    except CheckpointError:  # an unreadable file is the loader's to report, after the flags are checked
        return False


def use_toy_model(args) -> dict:
    """Point unset model flags at the bundled toy model (toy/weights/): its image model unless --sd15 names
    another toy-world model, its motion module, LCM LoRA and settings; returns the settings (toy.json)."""
    import json
    toy = json.loads(TOY["settings"].read_text())
    args.sd15 = args.sd15 or str(TOY["sd15"])
    args.motion = args.motion or str(TOY["i2v" if args.image else "motion"])
    if not args.lora:
        args.lora, args.lora_scale = [str(TOY["lora"])], args.lora_scale or [toy["lora_scale"]]
    args.original_steps = args.original_steps or toy["original_steps"]
    args.beta_end = args.beta_end or toy.get("beta_end")  # its I2V model too trained at this schedule
    if args.anchor_first_frame is None:  # where it applies: an image and the lcm sampler
        args.anchor_first_frame = toy.get("anchor_first_frame", False) and bool(args.image) and args.sampler == "lcm"
    return toy


def dtype_name(args) -> str:
    """--dtype, or fp16 on CUDA and fp32 elsewhere."""
    return args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")


def lora_scales(args) -> list[float]:
    """A scale per --lora: those given, then 0.8 for the rest."""
    return args.lora_scale + [0.8] * (len(args.lora) - len(args.lora_scale))


def schedule_and_grid(args, model):
    """(noise schedule, original_steps) of the flags; AnimateLCM-I2V has its own defaults (beta_end 0.014,
    a 200-point grid; otherwise 0.012 and 100)."""
    from lcm.schedule import NoiseSchedule
    i2v = model.unet.img_encoder is not None
    schedule = NoiseSchedule(args.beta_schedule, beta_end=args.beta_end or (0.014 if i2v else 0.012))
    return schedule, args.original_steps or (200 if i2v else 100)


def check_args(args, height: int, width: int) -> None:
    """Cheap checks before any weights are read: every problem in one UserError."""
    problems = []
    if height % 8 or width % 8 or height < 8 or width < 8:
        problems.append(f"--height and --width must be positive multiples of 8 (got {height}x{width})")
    for flag in ("frames", "steps", "fps", "decode_chunk", "context_frames", "upscale"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1 (got {value})")
    if args.steps > 1000:
        problems.append(f"--steps must be at most 1000, the noise schedule's length (got {args.steps})")
    if args.context_overlap < 0 or (args.context_frames and args.context_overlap >= args.context_frames):
        problems.append(f"--context-overlap must be 0 or more and below --context-frames (got {args.context_overlap})")
    if args.original_steps is not None and not 1 <= args.original_steps <= 1000:
        problems.append(f"--original-steps must be between 1 and 1000 (got {args.original_steps})")
    if args.clip_skip < 0:
        problems.append(f"--clip-skip must be 0 or more (got {args.clip_skip})")
    if not args.guidance >= 1:  # also NaN
        problems.append(f"--guidance must be at least 1 (got {args.guidance}); 1 means no guidance")
    if not 0 < args.strength <= 1:
        problems.append(f"--strength must be in (0, 1] (got {args.strength})")
    from pipeline import SPACINGS
    if args.timestep_spacing and args.timestep_spacing not in SPACINGS[args.sampler]:
        problems.append(f"--timestep-spacing {args.timestep_spacing} does not apply to --sampler {args.sampler} "
                        f"({', '.join(SPACINGS[args.sampler]) or 'LCM samples its own grid'})")
    if args.anchor_first_frame and (not args.image or args.sampler != "lcm"):
        problems.append("--anchor-first-frame needs --image and --sampler lcm")
    if args.beta_end is not None and not 0 < args.beta_end < 1:
        problems.append(f"--beta-end must be in (0, 1) (got {args.beta_end})")
    for flag in ("motion_scale", "control_scale"):
        if not math.isfinite(getattr(args, flag)):
            problems.append(f"--{flag.replace('_', '-')} must be a finite number (got {getattr(args, flag)})")
    problems += [f"--lora-scale must be a finite number (got {v})" for v in args.lora_scale if not math.isfinite(v)]
    problems += [p for p in (device_problem(args.device), output_problem(args.out)) if p]
    if len(args.lora_scale) > len(args.lora):
        problems.append("more --lora-scale values than --lora files")
    for flag in ("sd15", "motion", "image", "video", "controlnet", "controlnet_lora", "control"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            problems.append(f"--{flag.replace('_', '-')} {value}: no such file or folder")
    problems += [f"--lora {p}: no such file" for p in args.lora if not Path(p).exists()]
    if bool(args.controlnet) != bool(args.control):
        problems.append("--controlnet and --control go together (a ControlNet and its per-frame control video)")
    if args.controlnet_lora and not args.controlnet:
        problems.append("--controlnet-lora needs --controlnet")
    if args.image and args.video:
        problems.append("--image and --video cannot be combined")
    if args.control and args.context_frames:
        problems.append("--control and --context-frames cannot be combined yet")
    if 1 <= args.steps <= 1000 and 0 < args.strength <= 1 and 1 <= (args.original_steps or 100) <= 1000:
        problems += [p for p in [steps_problem(args)] if p]
    if problems:
        raise UserError("; ".join(problems))


def steps_problem(args) -> str | None:
    """Why the sampler's timesteps cannot be picked (--strength keeps none of the --steps, or the LCM
    grid has fewer points than --steps), or None. Without --original-steps the grid is the model's
    (100 points, AnimateLCM-I2V's 200), known once it loads: this checks with 200, so it refuses only
    what fails with either; the pipeline checks again against the loaded model."""
    from pipeline import Request, request_timesteps
    request = Request(prompt="", steps=args.steps, sampler=args.sampler, original_steps=args.original_steps or 200,
                      strength=args.strength, strength_convention=args.strength_convention,
                      video=torch.zeros(0) if args.video else None)  # only whether there is a video matters
    try:
        request_timesteps(request)
    except ValueError as e:
        return str(e)
    return None


if __name__ == "__main__":
    sys.exit(main())
