"""Measure the toy models: toy FVD and prompt accuracy per sampler and step count (a miniature of
AnimateLCM's Table 1), the stage-2 initialisation ablation, and image-to-video fidelity.

Every number is the mean over `seeds` independent sets of sampled videos, with their standard deviation
(the seed-to-seed spread), so differences can be judged.
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import torch

from lcm.schedule import NoiseSchedule
from media.colour import match_colours
from pipeline import Request, generate
from toy.classifier import (ATTRIBUTES, attribute_accuracy, frechet_distance, judge, labels, prompt_accuracy,
                             real_reference, to_model)
from toy.constants import FRAMES, ORIGINAL_STEPS, RESOLUTION, SCHEDULE
from toy.detect import detect, has_watermark
from toy.world import COLOURS, HELD_OUT, SEEN, sample_videos


@dataclasses.dataclass
class Method:
    """How a row samples: a model (StableDiffusion), a sampler, a guidance scale, and for DDIM or
    DPM-Solver++ a timestep spacing (None: the sampler's default, pipeline.SPACINGS)."""
    name: str
    model: object
    sampler: str = "lcm"
    guidance: float = 1.0
    spacing: str | None = None


def teacher_samplers(teacher, guidance: float) -> list[Method]:
    """The teacher as the paper's few-step baselines and their fair versions: DDIM and DPM-Solver++, each
    with its default spacing (DDIM's leading one is AnimateDiff's config, steps_offset 1; that the paper's
    baselines ran it is an inference) and with trailing spacing (from t = 999)."""
    return [Method("teacher DDIM", teacher, "ddim", guidance),
            Method("teacher DDIM, trailing", teacher, "ddim", guidance, "trailing"),
            Method("teacher DPM-Solver++", teacher, "dpmpp_2m", guidance),
            Method("teacher DPM-Solver++, trailing", teacher, "dpmpp_2m", guidance, "trailing")]


def toy_videos(model, captions: list[str], steps: int, sampler: str, guidance: float, seed: int,
               frames: int = FRAMES, resolution: int = RESOLUTION, original_steps: int = ORIGINAL_STEPS,
               schedule: NoiseSchedule = SCHEDULE, image: torch.Tensor | None = None,
               control: torch.Tensor | None = None, batch: int = 32, anchor: bool = False,
               spacing: str | None = None) -> torch.Tensor:
    """Videos [N, 3, F, H, W] in [-1, 1] of a toy model for many prompts, through pipeline.generate, `batch`
    at a time: video i has its own noise (seed * 100003 + i), whatever the batch. `image` (first frames
    [N, 3, H, W]) conditions the I2V encoder if the model has one; `anchor`: frame 0 is anchored to its
    latent (pipeline.Request.anchor_first_frame), with or without an encoder; `control`: [N, 3, F, H, W];
    `spacing`: DDIM's or DPM-Solver++'s timestep spacing (None: the sampler's default)."""
    out = []
    for start in range(0, len(captions), batch):
        part = slice(start, start + batch)
        chunk = captions[part]
        request = Request(prompt=chunk, seed=[seed * 100_003 + start + i for i in range(len(chunk))], frames=frames,
                          height=resolution, width=resolution, steps=steps, guidance=guidance, sampler=sampler,
                          timestep_spacing=spacing,
                          schedule=schedule, original_steps=original_steps, progress=False, match_colours=False,
                          image=None if image is None else image[part], anchor_first_frame=anchor,
                          control=None if control is None else control[part])
        out.append(generate(model, request).cpu() * 2 - 1)
    return torch.cat(out)


def prompts(count: int, seed: int, combos) -> tuple[list[str], list]:
    """`count` prompts drawn from `combos` (as clips, so the classifier's labels come with them)."""
    _, _, clips = sample_videos(count, seed, combos, frames=1)
    return [c.caption for c in clips], clips


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def evaluate_text_to_video(methods: list[Method], steps_list, classifier, count: int, seeds: int,
                           reference_count: int = 512, progress=print) -> list[dict]:
    """Per (method, steps): toy FVD against real seen-prompt clips, prompt accuracy (all three attributes)
    on seen and held-out prompts, and on seen prompts each attribute's accuracy by the judge
    ("seen_attributes") and by the pixel detector ("seen_attributes_detector"), and the share of them that
    draw the video condition's watermark ("watermark", toy/detect.py:has_watermark); each a (mean, std)
    over `seeds` sets of `count` videos."""
    reference = real_reference(classifier, reference_count, seed=50_000)
    rows = []
    for method in methods:
        for steps in steps_list:
            fvd, seen_acc, held_acc, marked = [], [], [], []
            by_judge, by_detector = {k: [] for k in ATTRIBUTES}, {k: [] for k in ATTRIBUTES}
            for s in range(seeds):
                caps, clips = prompts(count, 60_000 + s, SEEN)
                videos = toy_videos(method.model, caps, steps, method.sampler, method.guidance, seed=s,
                                    spacing=method.spacing)
                feats, preds = judge(classifier, videos)
                fvd.append(frechet_distance(feats, reference))
                seen_acc.append(prompt_accuracy(preds, clips))
                for k, v in attribute_accuracy(preds, clips).items():
                    by_judge[k].append(v)
                for k, v in attribute_accuracy(detect(videos), clips).items():
                    by_detector[k].append(v)
                marked.append(float(has_watermark(videos).float().mean()))
                caps, clips = prompts(max(count // 2, 6), 70_000 + s, HELD_OUT)
                _, preds = judge(classifier, toy_videos(method.model, caps, steps, method.sampler,
                                                        method.guidance, seed=1000 + s, spacing=method.spacing))
                held_acc.append(prompt_accuracy(preds, clips))
            row = {"method": method.name, "steps": steps, "fvd": mean_std(fvd), "seen_accuracy": mean_std(seen_acc),
                   "held_out_accuracy": mean_std(held_acc),
                   "seen_attributes": {k: mean_std(v) for k, v in by_judge.items()},
                   "seen_attributes_detector": {k: mean_std(v) for k, v in by_detector.items()},
                   "watermark": mean_std(marked)}
            progress(f"  {method.name:<28} {steps:>2} steps  FVD {row['fvd'][0]:8.1f} ± {row['fvd'][1]:6.1f}  "
                     f"accuracy seen {row['seen_accuracy'][0]:.2f} ± {row['seen_accuracy'][1]:.2f}  "
                     f"held-out {row['held_out_accuracy'][0]:.2f} ± {row['held_out_accuracy'][1]:.2f}")
            rows.append(row)
    return rows


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of mean squared errors on the [-1, 1] scale (peak-to-peak 2)."""
    return 10 * torch.log10(4 / mse.clamp(min=1e-12))


def image_to_video_set(model, steps: int, set_index: int, count: int, anchor: bool = False):
    """One I2V sample set: `count` real seen-prompt clips (the same for every model and step count), their
    first frames as the condition image, the videos generated from them (`anchor`: with the first frame
    anchored; the same draws), and those videos after AnimateLCM-I2V's colour matching (colour.py, what
    sample.py writes). Returns (first [N, 3, H, W], generated, matched [N, 3, F, H, W], masks [N, F, H, W]
    uint8, clips), pixels in [-1, 1]."""
    videos, masks, clips = sample_videos(count, 80_000 + set_index, SEEN)
    first = to_model(videos[:, :1])[:, :, 0]
    generated = toy_videos(model, [c.caption for c in clips], steps, "lcm", 1.0, seed=set_index, image=first,
                               anchor=anchor)
    matched = match_colours(generated / 2 + 0.5, first / 2 + 0.5) * 2 - 1
    return first, generated, matched, masks, clips


def image_to_video_scores(classifier, sample_set) -> tuple[float, float, float]:
    """One I2V sample set's (image_to_video_set's return) first-frame PSNR (dB) as made and colour-matched,
    and its motion accuracy (the judge's direction against the prompt's)."""
    first, generated, matched, _, clips = sample_set
    made, fixed = (float(psnr((video[:, :, 0] - first).square().mean((1, 2, 3))).mean())
                   for video in (generated, matched))
    _, preds = judge(classifier, generated)
    return made, fixed, float((preds["direction"] == labels(clips)["direction"]).float().mean())


def evaluate_image_to_video(model, steps_list, classifier, count: int, seeds: int, progress=print) -> list[dict]:
    """I2V: PSNR of the generated first frame against the condition image, as the model makes it and after
    AnimateLCM-I2V's colour matching, and motion accuracy (the classifier's direction matches the
    prompt's) on real first frames of seen combinations; the same again with the first frame anchored
    (keys "anchored_...")."""
    rows = []
    for steps in steps_list:
        row = {"steps": steps}
        for prefix, anchor in (("", False), ("anchored_", True)):
            first_psnr, matched_psnr, motion = zip(*(
                image_to_video_scores(classifier, image_to_video_set(model, steps, s, count, anchor))
                for s in range(seeds)))
            row |= {f"{prefix}first_frame_psnr": mean_std(first_psnr),
                    f"{prefix}first_frame_psnr_matched": mean_std(matched_psnr),
                    f"{prefix}motion_accuracy": mean_std(motion)}
            progress(f"  I2V {steps:>2} steps{', anchored' if anchor else ''}  first-frame PSNR "
                     f"{row[prefix + 'first_frame_psnr'][0]:.1f} ± {row[prefix + 'first_frame_psnr'][1]:.1f} dB "
                     f"(colour-matched {row[prefix + 'first_frame_psnr_matched'][0]:.1f} ± "
                     f"{row[prefix + 'first_frame_psnr_matched'][1]:.1f})  motion accuracy "
                     f"{row[prefix + 'motion_accuracy'][0]:.2f} ± {row[prefix + 'motion_accuracy'][1]:.2f}")
        rows.append(row)
    return rows


def coloured(videos: torch.Tensor, clips, tolerance: float = 0.4) -> torch.Tensor:
    """[N, F, H, W] bool: pixels of videos [N, 3, F, H, W] in [-1, 1] within `tolerance` (L1 over RGB)
    of their prompt's colour: the shape, not its fainter trail or the background."""
    colours = torch.tensor([COLOURS[c.colour] for c in clips]).float().div(127.5).sub(1)[:, :, None, None, None]
    return (videos - colours).abs().sum(1) < tolerance


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def layout_set(set_index: int, count: int):
    """One layout sample set: `count` real seen-prompt clips (the same for every model and step count), the
    shape's masks as truth [N, F, H, W] bool and as the control video [N, 3, F, H, W] in [0, 1].
    Returns (videos [N, F, H, W, 3] uint8, truth, control, clips)."""
    videos, masks, clips = sample_videos(count, 90_000 + set_index, SEEN)
    control = torch.from_numpy(masks).float().div(255)[:, None].expand(-1, 3, -1, -1, -1)
    return videos, torch.from_numpy(masks) > 127, control, clips


def evaluate_layout(model, steps_list, classifier, count: int, seeds: int, progress=print) -> list[dict]:
    """Layout control: the shape's mask video as the per-frame control; IoU between the mask and the
    pixels drawn in the prompt's colour (the same measure on the real clips is the ceiling, below 1
    because of pixels the 32x32 rendering blends at the edges)."""
    sets = [layout_set(s, count) for s in range(seeds)]
    real_ious = [mask_iou(coloured(to_model(videos), clips), truth) for videos, truth, _, clips in sets]
    rows = []
    for steps in steps_list:
        ious, acc = [], []
        for s, (_, truth, control, clips) in enumerate(sets):
            generated = toy_videos(model, [c.caption for c in clips], steps, "lcm", 1.0, seed=s, control=control)
            ious.append(mask_iou(coloured(generated, clips), truth))
            _, preds = judge(classifier, generated)
            acc.append(prompt_accuracy(preds, clips))
        row = {"steps": steps, "mask_iou": mean_std(ious), "real_mask_iou": mean_std(real_ious),
               "accuracy": mean_std(acc)}
        progress(f"  layout {steps:>2} steps  mask IoU {row['mask_iou'][0]:.2f} ± {row['mask_iou'][1]:.2f} "
                 f"(real clips {row['real_mask_iou'][0]:.2f})  "
                 f"prompt accuracy {row['accuracy'][0]:.2f} ± {row['accuracy'][1]:.2f}")
        rows.append(row)
    return rows


def strip(videos: list[torch.Tensor], scale: int = 3) -> np.ndarray:
    """Side-by-side uint8 frames [F, H*scale, W*len*scale, 3] of videos [3, F, H, W] in [-1, 1]."""
    row = torch.cat([(v.clamp(-1, 1) / 2 + 0.5) for v in videos], dim=-1)  # [3, F, H, W*len]
    row = row.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return (row.permute(1, 2, 3, 0) * 255).round().byte().numpy()

