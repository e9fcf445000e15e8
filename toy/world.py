"""The toy world: captioned videos of a coloured shape moving on a plain or textured background.

Every clip is a function of one integer seed (`clip_from_seed`), so the dataset is deterministic and
needs no download. A clip is drawn in one of two styles: "filled" (every training clip and still of the
pipeline) or "outline" (the shape and its trail as outlines OUTLINE_WIDTH pixels wide, the background
inside), a style the captions never mention: its stills personalize the image teacher (toy/stages.py),
its videos are rendered only to measure the personalized models. Captions follow one template, "a {colour} {shape} moving {direction}", and some
(colour, shape, direction) combinations never appear in training (`HELD_OUT`): each of their
attributes, and each pair of them, is seen in other combinations, so a model that composes attributes
can still draw them. Each clip also has its per-frame mask (the layout control of stage 3). A moving
shape leaves a fading trail, so even a still shows its direction (see `TRAIL`).
"""
from __future__ import annotations

import itertools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STYLES = ("filled", "outline")
OUTLINE_WIDTH = 2  # pixels at resolution 32
HELD_OUT = (("red", "triangle", "up"), ("green", "square", "left"), ("blue", "circle", "down"),
            ("yellow", "triangle", "right"), ("red", "square", "down"), ("blue", "triangle", "left"))
ALL = tuple(itertools.product(COLOURS, SHAPES, DIRECTIONS))
SEEN = tuple(c for c in ALL if c not in HELD_OUT)


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """The inverse of `caption`; a ValueError names what is not part of the world."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        raise ValueError(f"{text!r} is not a caption of the toy world: use 'a COLOUR SHAPE moving DIRECTION'")
    colour, shape, direction = words[1], words[2], words[4]
    for word, options in ((colour, COLOURS), (shape, SHAPES), (direction, DIRECTIONS)):
        if word not in options:
            raise ValueError(f"{word!r} is not in the toy world; choose from {', '.join(options)}")
    return colour, shape, direction


@dataclass
class Clip:
    colour: str
    shape: str
    direction: str
    size: float           # side (or diameter) in pixels at resolution 32
    start: tuple          # centre at frame 0, in [0, 1] coordinates
    speed: float          # pixels per frame at resolution 32
    background: tuple     # RGB of the plain background, or of the texture's light squares
    texture: int          # 0: plain; n > 0: a checkerboard of n-pixel squares (at resolution 32)
    style: str = "filled"  # or "outline"

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.direction)


def clip_from_seed(seed: int, combos=SEEN, frames: int = 8, style: str = "filled") -> Clip:
    """A random clip of one of `combos`, drawn so the shape stays inside the frame for `frames` frames
    (the same clip in either style)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    rng = np.random.default_rng(seed)
    colour, shape, direction = combos[rng.integers(len(combos))]
    size = float(rng.uniform(9, 13))
    speed = float(rng.uniform(1.2, 1.8))
    travel = speed * (frames - 1) / 32
    margin = (size / 2 + 1) / 32
    dx, dy = DIRECTIONS[direction]
    lo = [margin - min(0, d) * travel for d in (dx, dy)]
    hi = [1 - margin - max(0, d) * travel for d in (dx, dy)]
    start = tuple(float(rng.uniform(a, b)) for a, b in zip(lo, hi))
    grey = int(rng.integers(70, 150))
    background = tuple(int(np.clip(grey + rng.integers(-15, 16), 0, 255)) for _ in range(3))
    texture = int(rng.choice([0, 0, 2, 4]))  # half of the clips plain, half checkerboard
    return Clip(colour, shape, direction, size, start, speed, background, texture, style)


# A moving shape leaves a fading trail (pixels behind it at resolution 32, opacity), so a single still
# shows which way it goes, as a photo of a runner does. This matters for the AnimateDiff recipe: the
# motion module has no text input and the image layers are frozen after training on stills, so a
# caption's direction reaches the motion module only if the image layers already represent it.
TRAIL = ((6.0, 0.2), (4.0, 0.35), (2.0, 0.55))


def shape_mask(shape: str, cx: float, cy: float, r: float, resolution: int, outline: int = 0) -> np.ndarray:
    """uint8 [H, W] mask (255 on the shape) of a circle, square or triangle of half-size r centred at (cx, cy):
    the whole shape, or with `outline` > 0 only its outline, that many pixels wide, drawn inwards."""
    mask = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(mask)
    paint = {"outline": 255, "width": outline} if outline else {"fill": 255}
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **paint)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], **paint)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], **paint)
    return np.asarray(mask)


def render(clip: Clip, frames: int = 8, resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 video [F, H, W, 3] and uint8 masks [F, H, W] (255 on the shape's pixels: its outline, in that
    style) of one clip."""
    scale = resolution / 32
    outline = round(OUTLINE_WIDTH * scale) if clip.style == "outline" else 0
    ys, xs = np.mgrid[:resolution, :resolution]
    background = np.empty((resolution, resolution, 3), np.uint8)
    background[:] = clip.background
    if clip.texture:
        dark = ((xs // (clip.texture * scale)).astype(int) + (ys // (clip.texture * scale)).astype(int)) % 2 == 1
        background[dark] = (np.array(clip.background) * 0.75).astype(np.uint8)
    video = np.empty((frames, resolution, resolution, 3), np.uint8)
    masks = np.empty((frames, resolution, resolution), np.uint8)
    dx, dy = DIRECTIONS[clip.direction]
    colour = np.array(COLOURS[clip.colour], np.float32)
    for f in range(frames):
        cx = clip.start[0] * resolution + dx * clip.speed * scale * f
        cy = clip.start[1] * resolution + dy * clip.speed * scale * f
        frame = background.astype(np.float32)
        for back, alpha in TRAIL:  # the fading trail behind the shape, then the shape itself
            ghost = shape_mask(clip.shape, cx - dx * back * scale, cy - dy * back * scale, clip.size * scale / 2,
                               resolution, outline)
            frame = np.where(ghost[..., None] > 0, (1 - alpha) * frame + alpha * colour, frame)
        masks[f] = shape_mask(clip.shape, cx, cy, clip.size * scale / 2, resolution, outline)
        video[f] = np.where(masks[f][..., None] > 0, colour, frame).round().astype(np.uint8)
    return video, masks


# ---- the video condition: what public video data does to clips (the stills stay clean) ------------------

@dataclass(frozen=True)
class VideoCondition:
    """The defects of public video (WebVid) that curated image sets (LAION-aesthetics) lack, applied to
    every frame of a clip in the order they arise: a stock-footage mark burnt into the footage, the clip
    stored at a lower resolution and scaled back up, each frame compressed. AnimateLCM distils the image
    half on clean images for this reason (docs/toy-world.md, section 4.4)."""
    name: str
    watermark_opacity: float  # a white mark blended in at a fixed place, mid-frame (`watermark_mask`)
    scale: float              # stored at this share of the resolution, scaled back up (softer frames)
    jpeg_quality: int         # each frame JPEG-compressed at this quality (blocks, colour bleeding); 0: none


WEBVID = VideoCondition("webvid", watermark_opacity=0.35, scale=0.625, jpeg_quality=50)
CONDITIONS = {"clean": None, "webvid": WEBVID}  # toy/run.py --condition


def watermark_mask(resolution: int = 32) -> np.ndarray:
    """bool [H, W]: the stock-footage mark, a hollow box 2 pixels wide, 16 x 8 at resolution 32, centred,
    the way such marks sit mid-frame (a clip's shape crosses it as often as not)."""
    scale = resolution / 32
    mask = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(mask).rectangle([round(8 * scale), round(12 * scale), round(24 * scale) - 1,
                                    round(20 * scale) - 1], outline=255, width=round(2 * scale))
    return np.asarray(mask) > 0


def degrade(video: np.ndarray, condition: VideoCondition) -> np.ndarray:
    """uint8 video [F, H, W, 3] -> the same clip under `condition` (deterministic: the same input, the
    same output)."""
    frames, height, width, _ = video.shape
    mark = watermark_mask(height)[..., None]
    marked = np.where(mark, (1 - condition.watermark_opacity) * video + condition.watermark_opacity * 255.0, video)
    small = (max(1, round(width * condition.scale)), max(1, round(height * condition.scale)))
    out = np.empty_like(video)
    for f in range(frames):
        image = Image.fromarray(marked[f].round().astype(np.uint8))
        image = image.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
        if condition.jpeg_quality:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=condition.jpeg_quality)
            image = Image.open(buffer).convert("RGB")
        out[f] = np.asarray(image)
    return out


def write_degraded_clips(folder, source, condition: VideoCondition) -> None:
    """The training clips of `source` (write_dataset's clips/) under `condition`, same names and captions, as
    lossless WebP (a GIF's palette would add defects of its own). The stills are not touched."""
    from media.video import read_video, write_video
    from runtime.files import write_text
    folder, source = Path(folder), Path(source)
    folder.mkdir(parents=True, exist_ok=True)
    for gif in sorted(source.glob("*.gif")):
        write_video(degrade(read_video(gif), condition), folder / f"{gif.stem}.webp", fps=8)
        write_text(folder / f"{gif.stem}.txt", gif.with_suffix(".txt").read_text())


def write_dataset(folder, count: int, frames: int = 8, resolution: int = 32, seed: int = 0) -> None:
    """`count` training clips (clips/: GIF + caption; controls/: mask GIFs of the same names) and as many
    stills (images/: `write_stills`), with the clips' full captions, so the image and video models share
    one prompt language. Held-out combinations never appear."""
    from media.video import write_video
    from runtime.files import write_text
    folder = Path(folder)
    for sub in ("clips", "controls"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        clip = clip_from_seed(seed * 1_000_003 + i, SEEN, frames)
        video, masks = render(clip, frames, resolution)
        write_video(video, folder / "clips" / f"{i:05d}.gif", fps=8)
        write_video(np.repeat(masks[..., None], 3, -1), folder / "controls" / f"{i:05d}.gif", fps=8)
        write_text(folder / "clips" / f"{i:05d}.txt", clip.caption)
    write_stills(folder / "images", count, frames, resolution, seed, first=count)


def write_stills(folder, count: int, frames: int = 8, resolution: int = 32, seed: int = 0, first: int = 0,
                 style: str = "filled") -> None:
    """`count` captioned stills (PNG + caption): still i is a random frame of clip `seed * 1000003 + first + i`,
    drawn in `style`, with that clip's caption (the outline stills are the personalization data)."""
    from media.video import write_image
    from runtime.files import write_text
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        still = clip_from_seed(seed * 1_000_003 + first + i, SEEN, frames, style)
        video, _ = render(still, frames, resolution)
        frame = np.random.default_rng(i).integers(frames)
        write_image(video[frame], folder / f"{i:05d}.png")
        write_text(folder / f"{i:05d}.txt", still.caption)


def sample_videos(count: int, seed: int, combos=SEEN, frames: int = 8, resolution: int = 32, style: str = "filled",
                  condition: VideoCondition | None = None):
    """`count` fresh clips in memory (under `condition`, if given): (uint8 videos [N, F, H, W, 3], uint8 masks
    [N, F, H, W] of the clean shapes, clips)."""
    clips = [clip_from_seed(seed * 1_000_003 + i, combos, frames, style) for i in range(count)]
    pairs = [render(c, frames, resolution) for c in clips]
    videos = np.stack([p[0] if condition is None else degrade(p[0], condition) for p in pairs])
    return videos, np.stack([p[1] for p in pairs]), clips
