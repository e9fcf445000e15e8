"""The shipped toy model (toy/weights/): every model follows the prompt, AnimateLCM keeps the teacher's
quality in a few steps, stage 3 follows the image and the masks, the personalized model keeps its style,
and sample.py uses them; fresh samples at fixed seeds, asserted a stated margin below what was measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from toy.classifier import frechet_distance, judge, load_classifier, real_reference
from toy.constants import WEIGHTS
from toy.evaluate import prompts, toy_videos
from toy.world import SEEN, parse_caption, sample_videos

ROOT = Path(__file__).resolve().parents[1]


# Per-attribute accuracy of the shipped models on every other seen combination (21 prompts), by the two
# independent readings (the pixel detector and the judge), from fresh samples at fixed seeds. MEASURED holds
# what `python -m pytest tests/test_toy_shipped.py -s -n 0` printed for the shipped weights; each bound sits MARGIN
# below its measurement (and above chance: 0.25 colour and direction, 0.33 shape, 0.02 all three).
MARGIN = 0.1
FVD_MARGIN = 1.5  # measured: AnimateLCM 80.1 at one step against DDIM trailing's 181.8 (2.3x)
MEASURED = {
    "image teacher stills, DDIM 25": {"detector": {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0}},
    "teacher video, DDIM 25": {"detector": {"colour": 1.0, "shape": 0.952, "direction": 1.0, "all": 0.952},
                               "judge": {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0}},
    "AnimateLCM, 4 steps": {"detector": {"colour": 1.0, "shape": 0.905, "direction": 0.952, "all": 0.905},
                            "judge": {"colour": 1.0, "shape": 0.952, "direction": 0.952, "all": 0.905}},
}


@pytest.fixture(scope="module")
def shipped():
    assert (WEIGHTS / "toy_sd15.safetensors").exists(), "toy/weights/ is missing: run python toy/run.py --ship"
    from sd15 import load_sd15
    sd15 = WEIGHTS / "toy_sd15.safetensors"
    lora = [(WEIGHTS / "toy_lcm_lora.safetensors", 1.0)]
    return {"animatelcm": load_sd15(sd15, WEIGHTS / "toy_motion.safetensors", lora),
            "teacher": load_sd15(sd15, WEIGHTS / "toy_teacher_motion.safetensors"),
            "image": load_sd15(sd15),
            "classifier": load_classifier(WEIGHTS / "toy_classifier.safetensors"),
            "settings": json.loads((WEIGHTS / "toy.json").read_text())}


# what each row of MEASURED samples: (model of the `shipped` fixture, steps, sampler, frames; 1: stills)
FOLLOWING = {"image teacher stills, DDIM 25": ("image", 25, "ddim", 1),
             "teacher video, DDIM 25": ("teacher", 25, "ddim", 8),
             "AnimateLCM, 4 steps": ("animatelcm", 4, "lcm", 8)}


@pytest.mark.parametrize("name", list(MEASURED))  # one model a case: the cases run in parallel (pytest.ini)
def test_shipped_models_follow_every_attribute_of_the_prompt(shipped, name):
    """The teacher draws what the prompt says (colour, shape, and direction: the trail in a still, the
    motion in a video) and AnimateLCM keeps it at 4 steps; two readings, fresh samples, fixed seeds. The
    base model draws filled shapes, never outlines (the personalized model's style, below)."""
    from toy.health import prompt_following
    model, steps, sampler, frames = FOLLOWING[name]
    guidance = shipped["settings"]["guidance_teacher"] if sampler == "ddim" else 1.0
    record = prompt_following(shipped[model], steps, sampler, guidance, frames=frames, seed=5, combos=SEEN[::2],
                              judge=shipped["classifier"] if frames > 1 else None)
    readings = {"detector": {k: v for k, v in record.items() if k != "judge"}}
    if "judge" in record:
        readings["judge"] = record["judge"]
    print({name: readings})
    for reading, expected in MEASURED[name].items():
        for attribute, value in expected.items():
            got = readings[reading][attribute]
            assert got >= value - MARGIN, (name, reading, attribute, got, value)
    assert readings["detector"]["outline"] <= 0.1, readings["detector"]["outline"]


def test_shipped_animatelcm_beats_ddim_at_one_step_and_keeps_its_quality_at_four(shipped):
    """Fixed seeds, fresh samples: the shipped AnimateLCM against the teacher's DDIM at the same step
    counts by the toy FVD (the paper's Table 1 in miniature), DDIM as the paper runs it (leading spacing)
    and as the fair baseline (trailing). At 1 step far ahead of both; at 4 steps within the toy world's
    1.2x of DDIM. FVD_MEASURED: what `-s -n 0` printed (32 seen prompts, 256 real clips)."""
    caps, _ = prompts(32, 123, SEEN)
    reference = real_reference(shipped["classifier"], 256, seed=321)
    guidance = shipped["settings"]["guidance_teacher"]
    fvd = {name: frechet_distance(judge(shipped["classifier"], videos)[0], reference) for name, videos in (
        ("ours, 1 step", toy_videos(shipped["animatelcm"], caps, 1, "lcm", 1.0, seed=11)),
        ("DDIM, 1 step", toy_videos(shipped["teacher"], caps, 1, "ddim", guidance, seed=11)),
        ("DDIM trailing, 1 step", toy_videos(shipped["teacher"], caps, 1, "ddim", guidance, seed=11,
                                             spacing="trailing")),
        ("ours, 4 steps", toy_videos(shipped["animatelcm"], caps, 4, "lcm", 1.0, seed=11)),
        ("DDIM, 4 steps", toy_videos(shipped["teacher"], caps, 4, "ddim", guidance, seed=11)))}
    print(f"toy FVD {fvd}")
    assert fvd["ours, 1 step"] < fvd["DDIM, 1 step"] / 3
    assert fvd["ours, 1 step"] < fvd["DDIM trailing, 1 step"] / FVD_MARGIN
    assert fvd["ours, 4 steps"] < 1.2 * fvd["DDIM, 4 steps"]


# Stage 3 of the shipped run at 4 steps, on the first set of the evaluation's real clips (24 first frames,
# 24 mask videos): what `python -m pytest tests/test_toy_shipped.py -k stage3 -s -n 0` printed for the
# shipped weights.
# (The toy world's targets: I2V 25 dB, met with the first frame anchored, not by the encoder alone; layout 0.75
# of the real clips' IoU.)
STAGE3_MEASURED = {"first_frame_psnr_matched": 23.4, "motion_accuracy": 1.0, "anchored_first_frame_psnr": 25.9,
                   "anchored_first_frame_psnr_matched": 26.1, "anchored_motion_accuracy": 1.0,
                   "mask_iou": 0.72, "accuracy": 1.0}
STAGE3_MARGIN = {"first_frame_psnr_matched": 1.0, "motion_accuracy": 0.1, "anchored_first_frame_psnr": 1.0,
                 "anchored_first_frame_psnr_matched": 1.0, "anchored_motion_accuracy": 0.1,
                 "mask_iou": 0.05, "accuracy": 0.1}


def test_shipped_stage3_follows_the_image_and_the_masks(shipped):
    """I2V reproduces the given first frame (PSNR after AnimateLCM-I2V's colour matching; with the first
    frame anchored, as sample.py writes the toy model's, also before it) and moves as prompted; layout
    control draws the shape on the masks and keeps the prompt."""
    import dataclasses
    from sd15 import load_sd15
    from toy.evaluate import evaluate_image_to_video, evaluate_layout
    from unet.controlnet import load_controlnet
    i2v = load_sd15(WEIGHTS / "toy_sd15.safetensors", WEIGHTS / "toy_i2v_motion.safetensors",
                    [(WEIGHTS / "toy_lcm_lora.safetensors", 1.0)])
    layout = dataclasses.replace(shipped["animatelcm"])
    layout.controlnet = load_controlnet(WEIGHTS / "toy_layout_controlnet.safetensors",
                                        lora=WEIGHTS / "toy_layout_controlnet_lora.safetensors").eval()
    i2v.unet.eval(), layout.unet.eval()
    rows = {**evaluate_image_to_video(i2v, (4,), shipped["classifier"], 24, 1, progress=print)[0],
            **evaluate_layout(layout, (4,), shipped["classifier"], 24, 1, progress=print)[0]}
    for key, value in STAGE3_MEASURED.items():
        assert rows[key][0] >= value - STAGE3_MARGIN[key], (key, rows[key][0], value)


def test_sample_py_samples_the_toy_i2v_model_at_its_training_schedule():
    """The toy I2V model trained at beta_end 0.012 (toy.json), not AnimateLCM-I2V's 0.014; a flag still wins."""
    from sd15 import load_sd15
    i2v = load_sd15(WEIGHTS / "toy_sd15.safetensors", WEIGHTS / "toy_i2v_motion.safetensors")
    for flags, beta_end in (([], 0.012), (["--beta-end", "0.014"], 0.014)):
        args = sample.parse_args(["--prompt", "a red circle moving left", "--image", "first.png", *flags])
        sample.use_toy_model(args)
        schedule, original_steps = sample.schedule_and_grid(args, i2v)
        assert schedule.beta_end == beta_end and original_steps == 50


def test_sample_py_animates_an_image_with_the_toy_i2v_model(tmp_path):
    """With --image, the toy model's I2V motion module is the default and the first frame is anchored
    (toy.json); the written first frame keeps the image."""
    from PIL import Image
    from toy.evaluate import psnr
    from media.video import read_video
    for flags, anchored in (([], True), (["--anchor-first-frame", "false"], False), (["--sampler", "ddim"], False)):
        args = sample.parse_args(["--image", "first.png", *flags])
        sample.use_toy_model(args)
        assert args.motion.endswith("toy_i2v_motion.safetensors") and args.anchor_first_frame == anchored
    videos, _, clips = sample_videos(1, 80_000, SEEN)
    Image.fromarray(videos[0, 0]).save(tmp_path / "first.png")
    out = tmp_path / "i2v.gif"
    assert sample.main(["--image", str(tmp_path / "first.png"), "--prompt", clips[0].caption, "--upscale", "1",
                        "--out", str(out)]) == 0
    made, image = (torch.from_numpy(v).float() / 127.5 - 1 for v in (read_video(out)[0], videos[0, 0]))
    fidelity = psnr((made - image).square().mean())
    print(f"first frame against the image: {fidelity:.1f} dB")
    # measured 30.9 dB; other clips' first frames score 12-16 dB against this image
    assert fidelity > 25


def test_sample_py_draws_the_prompted_motion(tmp_path):
    """The README's example: "a yellow square moving down" moves down (the pixel detector, native size)."""
    from toy.classifier import ATTRIBUTES
    from toy.detect import detect
    from media.video import read_video
    prompt, out = "a yellow square moving down", tmp_path / "down.gif"
    assert sample.main(["--out", str(out), "--prompt", prompt, "--upscale", "1"]) == 0
    video = torch.from_numpy(read_video(out)).float().permute(3, 0, 1, 2)[None] / 127.5 - 1  # [1, 3, F, H, W]
    labels = {k: ATTRIBUTES[k][int(v[0])] if int(v[0]) >= 0 else None for k, v in detect(video).items()
              if k in ATTRIBUTES}
    colour, _, direction = parse_caption(prompt)
    assert labels["colour"] == colour and labels["direction"] == direction, labels


def test_python_sample_py_with_no_arguments_makes_a_toy_gif(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--out", str(tmp_path / "out.gif")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote" in run.stdout and (tmp_path / "out.gif").exists()
    from media.video import read_video
    assert read_video(tmp_path / "out.gif").shape == (8, 256, 256, 3)  # the toy's 32 px, written 8x (--upscale)


# The personalized toy model (toy/weights/toy_outline_sd15.safetensors: the teacher fine-tuned on outline
# stills, with its own VAE; toy/personalize.py), on every other seen combination: the share of videos drawn
# in the outline style and the direction, by the pixel detector. PERSONALIZED_MEASURED: what `-s -n 0` printed.
PERSONALIZED_MEASURED = {"personalized teacher, DDIM 25": {"outline": 0.905, "direction": 0.905},
                         "AnimateLCM on the personalized model, 4 steps": {"outline": 0.857, "direction": 0.905}}
# what each row samples: (motion module, LoRA or None, steps, sampler) on toy_outline_sd15.safetensors
PERSONALIZED = {"personalized teacher, DDIM 25": ("toy_teacher_motion.safetensors", None, 25, "ddim"),
                "AnimateLCM on the personalized model, 4 steps": ("toy_motion.safetensors", "toy_lcm_lora.safetensors",
                                                                  4, "lcm")}


@pytest.mark.parametrize("name", list(PERSONALIZED_MEASURED))
def test_shipped_personalized_model_keeps_its_style_in_four_steps(shipped, name):
    """The paper's title claim in miniature: the personalized image model with the teacher's motion module
    draws outlines, and with AnimateLCM's acceleration LoRA and motion module (trained on the base model
    only) it still does, in 4 steps (the base model's AnimateLCM draws none: the test above), and both still
    move as prompted: the shipped fine-tune is the gentle one of docs/toy-world.md 4.3 (the old, heavier
    recipe measured 0.62 and 0.67 here)."""
    from sd15 import load_sd15
    from toy.health import prompt_following
    motion, lora, steps, sampler = PERSONALIZED[name]
    model = load_sd15(WEIGHTS / "toy_outline_sd15.safetensors", WEIGHTS / motion,
                      [(WEIGHTS / lora, 1.0)] if lora else ())
    model.unet.eval()
    guidance = shipped["settings"]["guidance_teacher"] if sampler == "ddim" else 1.0
    record = prompt_following(model, steps, sampler, guidance, seed=5, combos=SEEN[::2])
    measured = {k: record[k] for k in ("outline", "direction", "all")}
    print({name: measured})
    for key, value in PERSONALIZED_MEASURED[name].items():
        assert measured[key] >= value - MARGIN, (name, key, measured[key], value)


def test_the_judge_reads_outline_shapes_less_well_than_the_detector():
    """Why the personalization is read by the pixel detector (docs/toy-world.md, section 2): the shipped judge,
    trained on filled clips, reads the shape of real outline clips less well than of filled ones (measured on
    4 x 256 clips of each: 0.93 against 1.00), while the detector reads both at least 0.95."""
    from toy.classifier import attribute_accuracy, labels, to_model
    from toy.detect import detect
    classifier = load_classifier(WEIGHTS / "toy_classifier.safetensors")
    shape = {}
    for style in ("filled", "outline"):
        videos, _, clips = sample_videos(256, 900, SEEN, style=style)
        x = to_model(videos)
        detected = float((detect(x)["shape"] == labels(clips)["shape"]).float().mean())
        shape[style] = attribute_accuracy(judge(classifier, x)[1], clips)["shape"]
        print(f"{style}: judge {shape[style]:.3f}, detector {detected:.3f}")
        assert detected >= 0.95, style
    assert shape["filled"] >= 0.99 and shape["outline"] <= 0.97


def test_sample_py_animates_a_personalized_toy_model_with_the_toy_defaults(tmp_path):
    """`sample.py --sd15 toy/weights/toy_outline_sd15.safetensors`: the bundled motion module, LCM LoRA and
    settings fill in everything not given, as for the bundled model; 4 steps, 8 frames of 32x32."""
    from media.video import read_video
    outline = str(WEIGHTS / "toy_outline_sd15.safetensors")
    args = sample.parse_args(["--sd15", outline])
    assert sample.is_toy_model(outline)
    sample.use_toy_model(args)
    assert args.sd15 == outline and args.motion.endswith("toy_motion.safetensors")
    assert args.lora[0].endswith("toy_lcm_lora.safetensors") and args.original_steps == 50
    assert not sample.is_toy_model(str(WEIGHTS / "toy_sd15.safetensors"))  # the bundled one needs no mark
    out = tmp_path / "outline.gif"
    assert sample.main(["--sd15", outline, "--prompt", "a red circle moving left", "--upscale", "1",
                        "--out", str(out)]) == 0
    assert read_video(out).shape == (8, 32, 32, 3)
