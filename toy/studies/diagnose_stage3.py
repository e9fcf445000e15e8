"""Where stage 3's error is made (docs/toy-world.md 6.4 and 6.5): the breakdowns behind its prose.

    python -m toy.studies.diagnose_stage3                       # the run's I2V encoder and ControlNet, 4 steps
    python -m toy.studies.diagnose_stage3 --shipped             # the same for the shipped weights (toy/weights/)
    python -m toy.studies.diagnose_stage3 --i2v runs/s3/x/i2v_motion_module.safetensors --controlnet ""

Image-to-video: the generated first frame against the given image, per background texture, as made
and after AnimateLCM-I2V's colour matching, split into background and shape pixels, and the error of its
mean colour; then what anchoring the first frame does (lcm/sampler.py:sample_lcm), with the encoder and
with the text-to-video model alone: the first frame, the motion, and whether the later frames still
follow the image (the last frame's background against the image's; frame 0 against frame 1).
Layout control: the shape drawn in the prompt's colour against the control masks, with the real masks
and with a zero control video (a ControlNet that steers makes them differ), as mask IoU, distance
between centroids and area ratio. The same real clips as toy/evaluate.py's stage-3 rows.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch


from toy.evaluate import (coloured, toy_videos, image_to_video_scores, image_to_video_set, layout_set,
                          mask_iou, psnr)
from toy.world import SEEN, sample_videos


@torch.no_grad()
def image_to_video(model, steps: int, count: int, seeds: int) -> dict:
    """{texture: {"frames", "psnr", "matched", "background", "shape"}} averaged over frames (dB), and
    "mean_colour_error": the mean over frames of |mean RGB of the generated first frame - the image's|."""
    per_texture, colour_error = {}, []
    for s in range(seeds):
        first, generated, matched, masks, clips = image_to_video_set(model, steps, s, count)
        colour_error.append((generated[:, :, 0].mean((2, 3)) - first.mean((2, 3))).abs())
        for i, clip in enumerate(clips):
            shape = torch.from_numpy(masks[i, 0] > 127)
            raw = (generated[i, :, 0] - first[i]).square().mean(0)  # [H, W]
            fixed = (matched[i, :, 0] - first[i]).square().mean(0)
            row = per_texture.setdefault(clip.texture, {"psnr": [], "matched": [], "background": [], "shape": []})
            row["psnr"].append(float(psnr(raw.mean())))
            row["matched"].append(float(psnr(fixed.mean())))
            row["background"].append(float(psnr(fixed[~shape].mean())))
            if shape.any():  # a shape can start partly outside the frame
                row["shape"].append(float(psnr(fixed[shape].mean())))
    result = {texture: {"frames": len(row["psnr"]), **{k: statistics.mean(v) for k, v in row.items()}}
              for texture, row in sorted(per_texture.items())}
    return {"textures": result, "mean_colour_error": float(torch.cat(colour_error).mean())}


@torch.no_grad()
def anchoring(i2v, t2v, classifier, steps: int, count: int, seeds: int) -> dict:
    """{variant: {metric: mean over sets}} for the I2V encoder alone, the encoder with the first frame
    anchored, and the text-to-video model with it anchored (no encoder): first-frame PSNR (as made,
    colour-matched), motion accuracy (the judge), the last frame's background against the image's
    ("last_background"; the shape's pixels in the first and last frame left out) and frame 0 against
    frame 1 ("frame_0_to_1"), each in dB, colour-matched; "real" has the real clips' last two."""
    from toy.classifier import to_model
    variants = {"encoder": (i2v, False), "encoder, anchored": (i2v, True), "text-to-video, anchored": (t2v, True)}
    sums = {name: {} for name in (*variants, "real")}

    def add(name, key, value):
        sums[name].setdefault(key, []).append(float(value))

    def later_frames(name, video, first, masks):
        background = ~torch.from_numpy((masks[:, 0] > 127) | (masks[:, -1] > 127))  # [N, H, W]
        error = (video[:, :, -1] - first).square().mean(1)
        add(name, "last_background", psnr(torch.stack([e[b].mean() for e, b in zip(error, background)])).mean())
        add(name, "frame_0_to_1", psnr((video[:, :, 1] - video[:, :, 0]).square().mean((1, 2, 3))).mean())

    for s in range(seeds):
        for name, (model, anchor) in variants.items():
            made = image_to_video_set(model, steps, s, count, anchor)
            for key, value in zip(("psnr", "matched", "motion"), image_to_video_scores(classifier, made)):
                add(name, key, value)
            first, _, matched, masks, _ = made
            later_frames(name, matched, first, masks)
        videos, masks, _ = sample_videos(count, 80_000 + s, SEEN)  # image_to_video_set's clips
        real = to_model(videos)
        later_frames("real", real, real[:, :, 0], masks)
    return {name: {k: statistics.mean(v) for k, v in row.items()} for name, row in sums.items()}


def centroids(masks: torch.Tensor) -> torch.Tensor:
    """[..., H, W] bool -> [..., 2] (row, column) centre of each mask."""
    ys, xs = torch.meshgrid(torch.arange(masks.shape[-2]), torch.arange(masks.shape[-1]), indexing="ij")
    weight = masks.float().sum((-2, -1)).clamp(min=1)
    return torch.stack([(masks * ys).sum((-2, -1)) / weight, (masks * xs).sum((-2, -1)) / weight], -1)


@torch.no_grad()
def layout(model, steps: int, count: int, seed: int = 0) -> dict:
    """{"real masks" | "zero control": {"iou", "centroid_px" (median), "area_ratio"}} on one set of clips."""
    _, truth, control, clips = layout_set(seed, count)
    result = {}
    for name, given in (("real masks", control), ("zero control", torch.zeros_like(control))):
        drawn = coloured(toy_videos(model, [c.caption for c in clips], steps, "lcm", 1.0, seed=seed,
                                        control=given), clips)
        result[name] = {"iou": mask_iou(drawn, truth),
                        "centroid_px": float((centroids(drawn) - centroids(truth)).norm(dim=-1).median()),
                        "area_ratio": float(drawn.float().sum() / truth.float().sum().clamp(min=1))}
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/toy", help="a toy/run.py folder: its teacher, stage-1 LoRA, stage-2 module")
    p.add_argument("--shipped", action="store_true", help="the shipped weights (toy/weights/) instead of --run")
    p.add_argument("--i2v", default=None, help="an I2V motion module (default: the run's); empty: skip")
    p.add_argument("--controlnet", default=None, help="a ControlNet (default: the run's); empty: skip")
    p.add_argument("--controlnet-lora", default=None, help="its stage-3 LoRA (default: the run's); empty: none")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--seeds", type=int, default=3, help="sets of clips for the I2V breakdown")
    args = p.parse_args(argv)
    from sd15 import load_sd15
    from unet.controlnet import load_controlnet
    from toy.classifier import load_classifier
    from toy.constants import SHIPPED, WEIGHTS
    shipped = {run_path: WEIGHTS / name for name, run_path in SHIPPED.items()}

    def file(relative: str) -> Path:  # a file of the run, or the shipped file made from it
        return shipped[relative] if args.shipped else Path(args.run) / relative

    teacher, lora = file("teacher_image/model.safetensors"), file("stage1/lora.safetensors")
    t2v = file("stage2/motion_module.safetensors")
    i2v = file("i2v/i2v_motion_module.safetensors") if args.i2v is None else args.i2v
    controlnet = file("layout_diffusion/controlnet.safetensors") if args.controlnet is None else args.controlnet
    controlnet_lora = file("layout/controlnet_lora.safetensors") if args.controlnet_lora is None \
        else args.controlnet_lora
    report = {}
    if i2v:
        model = load_sd15(teacher, i2v, [(lora, 1.0)])
        model.unet.eval()
        report["image_to_video"] = found = image_to_video(model, args.steps, args.count, args.seeds)
        print(f"image-to-video, {args.steps} steps, first frame against the image (dB):")
        for texture, row in found["textures"].items():
            print(f"  texture {texture} ({row['frames']} videos): {row['psnr']:.1f}, "
                  f"colour-matched {row['matched']:.1f} (background {row['background']:.1f}, shape {row['shape']:.1f})")
        print(f"  mean colour error per channel ([-1, 1] scale): {found['mean_colour_error']:.3f}")
        text_to_video = load_sd15(teacher, t2v, [(lora, 1.0)])
        text_to_video.unet.eval()
        classifier = load_classifier(file("classifier/classifier.safetensors"))
        report["anchoring"] = found = anchoring(model, text_to_video, classifier, args.steps, args.count, args.seeds)
        print(f"anchoring the first frame, {args.steps} steps (dB; colour-matched but the first column):")
        for name, row in found.items():
            print(f"  {name:>24}: " + ("" if name == "real" else
                                       f"first frame {row['psnr']:.1f}, colour-matched {row['matched']:.1f}, "
                                       f"motion accuracy {row['motion']:.2f}, ") +
                  f"last frame's background {row['last_background']:.1f}, frame 0 to 1 {row['frame_0_to_1']:.1f}")
    if controlnet:
        model = load_sd15(teacher, t2v, [(lora, 1.0)])
        model.controlnet = load_controlnet(controlnet, lora=controlnet_lora or None).eval()
        model.unet.eval()
        report["layout"] = found = layout(model, args.steps, args.count)
        print(f"layout control, {args.steps} steps, the prompt's colour against the control masks:")
        for name, row in found.items():
            print(f"  {name:>12}: IoU {row['iou']:.2f}, centroid {row['centroid_px']:.1f} px from the mask's, "
                  f"area {row['area_ratio']:.2f} of the mask's")
    return report


if __name__ == "__main__":
    main()
