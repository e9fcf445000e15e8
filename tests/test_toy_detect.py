"""The toy world's pixel detector: it must read real clips (and the VAE's reconstructions of them)
before its reading of generated videos means anything."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toy.classifier import ATTRIBUTES, labels, to_model
from toy.detect import detect, detect_stills
from toy.world import ALL, sample_videos

ROOT = Path(__file__).resolve().parents[1]


def accuracy(preds, clips, key, truth="direction"):
    return float((preds[key] == labels(clips)[truth if key == "trail" else key]).float().mean())


def test_detector_reads_real_clips_and_stills():
    videos, _, clips = sample_videos(240, 321, ALL)  # all 48 combinations, held-out ones included
    x = to_model(videos)
    preds = detect(x)
    for key in (*ATTRIBUTES, "trail"):
        assert accuracy(preds, clips, key) >= 0.95, key
    stills = detect_stills(x[:, :, 5])  # one frame: the direction from the trail's side alone
    for key in ATTRIBUTES:
        assert accuracy(stills, clips, key) >= 0.95, key


def test_detector_reads_the_outline_style_and_every_attribute_of_outlined_clips():
    """The style reading (toy/detect.py:style_of) on real clips of both styles, 480 each, every combination:
    filled clips read filled, outline clips outline; colour, shape (read on the filled-in outline),
    direction and the trail read as on filled clips; the same on single stills."""
    from toy.detect import STYLES
    for style in STYLES:
        videos, _, clips = sample_videos(480, 321, ALL, style=style)
        x = to_model(videos)
        preds, stills = detect(x), detect_stills(x[:, :, 5])
        for reading in (preds, stills):
            assert float((reading["style"] == STYLES.index(style)).float().mean()) >= 0.99, style
        for key in (*ATTRIBUTES, "trail"):
            assert accuracy(preds, clips, key) >= 0.95, (style, key)
        for key in ATTRIBUTES:
            assert accuracy(stills, clips, key) >= 0.95, (style, key)


def test_filling_in_an_outline_and_reading_its_style():
    """A square outline is filled in; a closed or an open (gapped) outline reads as an outline (the open one by
    its empty centre); a filled square as filled."""
    from toy.detect import filled_in, grown, style_of
    ring = torch.zeros(1, 9, 9, dtype=torch.bool)
    ring[0, 2:7, 2:7] = True
    ring[0, 3:6, 3:6] = False                                   # a 5x5 square outline, 1 px wide: 16 around 9
    assert filled_in(ring)[0, 2:7, 2:7].all() and filled_in(ring).sum() == 25
    assert style_of(ring, ring.float()).tolist() == [1]         # 9 of 25 pixels hollow
    solid = filled_in(ring)
    assert torch.equal(filled_in(solid), solid) and style_of(solid, solid.float()).tolist() == [0]
    broken = ring.clone()
    broken[0, 2, 4] = False                                     # a gap: the inside is reachable, nothing to fill ...
    assert torch.equal(filled_in(broken), broken)
    assert style_of(broken, broken.float()).tolist() == [1]     # ... but its centre is empty
    assert filled_in(grown(broken))[0, 2:7, 2:7].all()          # and one pixel of growth closes the gap


def test_detector_is_not_fooled_by_reversed_or_blank_videos():
    videos, _, clips = sample_videos(48, 7, ALL)
    x = to_model(videos)
    backwards = detect(x.flip(2))  # played backwards: the shape moves against its trail
    assert accuracy(backwards, clips, "direction") < 0.05  # motion is read from the frames' order
    assert accuracy(backwards, clips, "trail") >= 0.95     # the trail from each frame alone
    blank = detect(torch.zeros_like(x))  # grey: nothing to read
    assert all((blank[k] == -1).all() for k in blank)


def test_health_scores_real_clips_of_its_fixed_prompts_as_right():
    """fixed_prompts' labels line up with its captions: real clips of those captions score ~1."""
    from toy.health import fixed_prompts, scores
    from toy.world import SEEN, Clip, parse_caption, render
    captions, target = fixed_prompts(SEEN, repeats=2)
    assert len(captions) == 2 * len(SEEN) and captions[0] == "a red circle moving left"
    clips = [Clip(*parse_caption(c), size=11.0, start=(0.5, 0.5), speed=1.5, background=(110, 110, 110), texture=0)
             for c in captions]
    videos = to_model(np.stack([render(c)[0] for c in clips]))
    right = scores(detect(videos), target)
    assert right["all"] >= 0.95 and min(right.values()) >= 0.95
    wrong = scores(detect(videos.flip(2)), target)  # reversed: every direction wrong, nothing else
    assert wrong["direction"] == 0 and wrong["all"] == 0 and wrong["colour"] >= 0.95
    from toy.health import shape_confusion
    counts = [int((target["shape"] == k).sum()) for k in range(3)]  # real clips: every shape read as itself
    assert shape_confusion(detect(videos), target) == [[counts[0], 0, 0, 0], [0, counts[1], 0, 0], [0, 0, counts[2], 0]]
    read = {"shape": torch.tensor([1, -1, 2, 0])}  # a square read as a square, one as nothing; ...
    assert shape_confusion(read, {"shape": torch.tensor([1, 1, 0, 0])}) == [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]]


def test_decide_reads_the_clip_back_at_low_noise():
    """toy/decide.py's instrument on the shipped teacher: at t = 300 a clip's motion is plain in x_t, so
    the x0 prediction and a DDIM run from there move the way the clip does, whichever caption is given
    (a wrong noise level, latent scale or frame order would put this at chance, 0.25)."""
    from sd15 import load_sd15
    from toy.studies.decide import follows_clip, real_latents
    from toy.world import SEEN
    weights = ROOT / "toy" / "weights"
    model = load_sd15(weights / "toy_sd15.safetensors", weights / "toy_teacher_motion.safetensors")
    model.unet.eval()
    combos = SEEN[::6]
    latents = real_latents(model, combos)
    for opposite in (False, True):
        x0_share, solved_share = follows_clip(model, latents, combos, 300, opposite, solver_stride=100)
        assert x0_share >= 0.85 and solved_share >= 0.85, (opposite, x0_share, solved_share)


def test_health_separates_the_trail_from_the_motion(monkeypatch):
    """prompt_following's video record: real clips have the trail on the prompted side and move away
    from it; played backwards they keep the trail and move towards it."""
    import toy.evaluate
    from toy.health import prompt_following
    from toy.world import Clip, parse_caption, render

    def real_clips(model, captions, *args, **kwargs):
        clips = [Clip(*parse_caption(c), size=11.0, start=(0.5, 0.5), speed=1.5, background=(110, 110, 110),
                      texture=0) for c in captions]
        videos = to_model(np.stack([render(c)[0] for c in clips]))
        return videos.flip(2) if model == "backwards" else videos

    monkeypatch.setattr(toy.evaluate, "toy_videos", real_clips)
    from toy.classifier import load_classifier
    judge = load_classifier(ROOT / "toy" / "weights" / "toy_classifier.safetensors")
    forwards = prompt_following("forwards", 4, "ddim", 4.5, frames=8, judge=judge)
    assert forwards["trail"] >= 0.95 and forwards["motion_follows_trail"] >= 0.95 and forwards["direction"] >= 0.95
    assert min(forwards["judge"].values()) >= 0.9  # the judge, on the same videos, agrees
    backwards = prompt_following("backwards", 4, "ddim", 4.5, frames=8)
    assert backwards["trail"] >= 0.95 and backwards["motion_follows_trail"] == 0 and backwards["direction"] == 0


def gaussian_blur(videos: torch.Tensor, sigma: float, radius: int = 3) -> torch.Tensor:
    """Each frame of videos [N, 3, F, H, W] blurred by a separable Gaussian (edges replicated)."""
    import torch.nn.functional as F
    kernel = torch.exp(-torch.arange(-radius, radius + 1).float() ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    n, c, f, h, w = videos.shape
    x = videos.transpose(1, 2).reshape(n * f * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.view(n, f, c, h, w).transpose(1, 2)


def test_detector_reads_soft_shapes():
    """Blurred real clips (the soft edges of generated videos): the shape is still read, and a square is
    not taken for a circle (docs/toy-world.md 6.2: the teacher's squares that it reads as circles are
    misshapen, not merely soft)."""
    videos, _, clips = sample_videos(240, 321, ALL)
    x, truth = to_model(videos), labels(clips)["shape"]
    for sigma in (0.5, 0.75, 1.0, 1.25):
        shape = detect(gaussian_blur(x, sigma))["shape"]
        assert float((shape == truth).float().mean()) >= 0.9, sigma
        assert float((shape[truth == 1] == 1).float().mean()) >= 0.9, sigma  # squares stay squares


def test_health_command_samples_with_the_seed_it_is_given(monkeypatch, capsys):
    """`toy/health.py --seed` picks the sample set (the noise), so readings can be repeated on others."""
    from toy import health
    seen = []

    def following(model, steps, sampler, guidance, frames, combos, repeats, seed, judge, confusion):
        seen.append((frames, steps, repeats, seed))
        return {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "shape_confusion": [[0] * 4] * 3}

    monkeypatch.setattr(health, "prompt_following", following)
    sd15 = str(ROOT / "toy" / "weights" / "toy_sd15.safetensors")
    assert health.main(["--sd15", sd15, "--steps", "50", "--seed", "2"]) == 0
    assert health.main(["--sd15", sd15, "--steps", "50"]) == 0
    assert seen == [(1, 50, 2, 2)] * 2 + [(1, 50, 2, 0)] * 2  # seen and held-out prompts; the default seed is 0
    assert "seen 50 ddim steps: colour 1.00" in capsys.readouterr().out


def test_the_watermark_reading_tells_webvid_like_clips_from_clean_ones():
    """toy/detect.py:has_watermark on real clips drawn with and without the video condition, 256 of each, every
    combination and both styles: right on at least 0.98 of them (`python -m toy.studies.watermark_reading`
    measures 0.998 on 1024 + 1024 filled clips and 0.994 on 256 + 256 outline clips)."""
    from toy.detect import has_watermark
    from toy.world import WEBVID
    right = []
    for style in ("filled", "outline"):
        clean, _, _ = sample_videos(128, 654, ALL, style=style)
        marked, _, _ = sample_videos(128, 654, ALL, style=style, condition=WEBVID)
        right += [~has_watermark(to_model(clean)), has_watermark(to_model(marked))]
    assert torch.cat(right).float().mean() >= 0.98


def test_the_watermark_study_prints_each_styles_contrasts_and_accuracy(capsys):
    from toy.studies import watermark_reading
    assert watermark_reading.main(["--filled", "16", "--outline", "16"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "right on" in line]
    assert [line.split(",")[0].strip() for line in lines] == ["filled", "outline"]
    assert all(float(line.split("right on ")[1].split()[0]) >= 0.9 for line in lines)


def test_degraded_clips_are_the_same_clips_deterministically_and_the_stills_are_untouched(tmp_path):
    """toy/world.py:write_degraded_clips: the training clips under the condition, the same names and captions,
    the same bytes when written again; the clean clips and the stills are not touched; each degraded clip is
    the clean one with the mark, softer and compressed (close to it away from the mark)."""
    import hashlib
    from media.video import read_video
    from toy.world import WEBVID, degrade, watermark_mask, write_dataset, write_degraded_clips

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    write_dataset(tmp_path / "data", 6)
    before = {sub: digests(tmp_path / "data" / sub) for sub in ("clips", "images")}
    write_degraded_clips(tmp_path / "a", tmp_path / "data" / "clips", WEBVID)
    write_degraded_clips(tmp_path / "b", tmp_path / "data" / "clips", WEBVID)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert {sub: digests(tmp_path / "data" / sub) for sub in ("clips", "images")} == before
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(n.replace(".gif", ".webp") for n in before["clips"])
    clean, degraded = read_video(tmp_path / "data" / "clips" / "00000.gif"), read_video(tmp_path / "a" / "00000.webp")
    assert np.array_equal(degraded, degrade(clean, WEBVID))
    away = ~watermark_mask(32)
    assert 1 < np.abs(degraded.astype(float) - clean)[:, away].mean() < 20  # softer, not another clip
    assert (tmp_path / "a" / "00000.txt").read_text() == (tmp_path / "data" / "clips" / "00000.txt").read_text()
