"""A pixel-level reading of the toy world: colour, shape and direction from pixels, no learned weights.

The judge (`toy/classifier.py`) is a network trained on real clips; this is its independent check.
Both must agree before a claim about prompt following is believed.

Every pixel of the world is a blend `p = (1 - a) * background + a * colour` with a grey-ish
background, so the pixel's chroma (p minus its own grey level) is about `a` times the colour's
chroma. That gives, per pixel, the colour (the direction of its chroma) and the opacity `a`:
  - colour: the prompt colour whose chroma direction the strongly coloured pixels vote for;
  - core: pixels with a >= CORE (the shape itself; the trail is drawn at a <= 0.77);
  - shape: a triangle is bottom-heavy; a square fills its bounding box (~1), a circle ~0.79 of it (read on
    the core with the background it encloses filled in, one-pixel gaps closed, so an outline is read as
    its shape);
  - style: "outline" where the core encloses background (a share HOLLOW or more of the filled-in shape)
    or the core's centre is background (a generated outline with a gap encloses nothing), else "filled";
  - motion: the displacement of the core's centroid from the first to the last frame;
  - trail: the side on which the faint pixels (TRAIL_LOW <= a < CORE) lie, in each frame; the
    shape moves away from it, so a single still shows its direction.
Labels are indices into `toy.classifier.ATTRIBUTES` (so its accuracy functions apply); -1 where
nothing can be read (no coloured pixels).
"""
from __future__ import annotations

import torch

from toy.world import COLOURS, DIRECTIONS

CHROMA = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5  # [4, 3], in [-1, 1] units
CHROMA = CHROMA - CHROMA.mean(1, keepdim=True)
UNIT = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32)  # [4, 2] (x, y), y down
CORE, TRAIL_LOW, VOTE = 0.75, 0.15, 0.35  # opacities: the shape; the faintest trail; pixels that vote on colour
TRIANGLE_BALANCE, SQUARE_FILL = 0.6, 0.87  # upper / lower half mass below -> triangle; box fill above -> square
HOLLOW = 0.12  # share of the filled-in shape that is not core: above, an outline (real clips: 0.18-0.54)
EMPTY_CENTRE = 0.5  # opacity at the core's centre below which the shape is hollow
STYLES = ("filled", "outline")


def colour_and_opacity(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [N, 3, H, W] in [-1, 1] -> (colour index [N], each pixel's opacity of each colour [N, 4, H, W])."""
    chroma = frames - frames.mean(1, keepdim=True)                             # [N, 3, H, W]
    opacity = torch.einsum("nchw,kc->nkhw", chroma, CHROMA) / CHROMA.square().sum(1)[None, :, None, None]
    # a pixel votes for the colour it is most of, with that opacity, if it is coloured at all
    best, which = opacity.max(1)                                                # [N, H, W]
    votes = torch.zeros(len(frames), len(CHROMA)).scatter_add_(
        1, which.flatten(1), (best * (best > VOTE)).flatten(1))
    return torch.where(votes.sum(1) > 0, votes.argmax(1), -1), opacity


def centroid(mask: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of mass of boolean masks [N, H, W] -> [N, 2] (NaN where empty)."""
    ys, xs = torch.meshgrid(torch.arange(mask.shape[-2]), torch.arange(mask.shape[-1]), indexing="ij")
    m = mask.float()
    total = m.sum((1, 2))
    return torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], 1) / total[:, None]


def nearest_direction(vectors: torch.Tensor) -> torch.Tensor:
    """[N, 2] displacement vectors -> index of the closest of the four directions (-1 for none)."""
    index = (vectors @ UNIT.T).argmax(1)
    return torch.where(torch.isfinite(vectors).all(1) & (vectors.abs().sum(1) > 0), index, -1)


def shape_of(core: torch.Tensor) -> torch.Tensor:
    """Index into SHAPES (circle, square, triangle) of core masks [N, H, W]: a triangle (apex up) has a
    third of the mass of its lower half in its upper half; a square fills its bounding box, a circle
    about 0.79 of it."""
    n, h, w = core.shape
    rows, cols = core.any(2), core.any(1)                                        # [N, H], [N, W]
    idx_h, idx_w = torch.arange(h).expand(n, h), torch.arange(w).expand(n, w)
    top, bottom = torch.where(rows, idx_h, h).amin(1), torch.where(rows, idx_h, -1).amax(1)
    left, right = torch.where(cols, idx_w, w).amin(1), torch.where(cols, idx_w, -1).amax(1)
    height, width = (bottom - top + 1).clamp(min=1), (right - left + 1).clamp(min=1)
    fill = core.sum((1, 2)) / (height * width)
    middle = (top + bottom).float() / 2                                          # the box's middle row
    ys = torch.arange(h).float()[None, :, None]
    upper = (core & (ys < middle[:, None, None])).sum((1, 2))
    lower = (core & (ys > middle[:, None, None])).sum((1, 2))
    shape = torch.where(upper < TRIANGLE_BALANCE * lower, 2, torch.where(fill >= SQUARE_FILL, 1, 0))
    return torch.where((height > 2) & (width > 2), shape, -1)


def filled_in(core: torch.Tensor) -> torch.Tensor:
    """Core masks [N, H, W] with the background they enclose: every pixel that cannot be reached from the
    frame's border through pixels outside the core (4-neighbour flood fill)."""
    free = ~core
    reach = torch.zeros_like(core)
    reach[:, 0], reach[:, -1], reach[:, :, 0], reach[:, :, -1] = free[:, 0], free[:, -1], free[:, :, 0], free[:, :, -1]
    while True:
        spread = grown(reach) & free
        if torch.equal(spread, reach):
            return ~reach
        reach = spread


def grown(mask: torch.Tensor) -> torch.Tensor:
    """Masks [N, H, W] grown by one pixel to each side (4-neighbours): closes one-pixel gaps."""
    out = mask.clone()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def style_of(core: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """Index into STYLES per frame [N] (-1 where there is no core): outline where the core leaves a share
    HOLLOW of its filled-in shape empty, or where the opacity at the core's centre (the 2x2 pixels
    around its centroid) is below EMPTY_CENTRE."""
    area = filled_in(core).sum((1, 2))
    hollow = 1 - core.sum((1, 2)) / area.clamp(min=1)
    x, y = centroid(core).nan_to_num(0).unbind(1)
    h, w = core.shape[1:]
    top, left = y.floor().long().clamp(0, h - 2), x.floor().long().clamp(0, w - 2)
    rows, cols = top[:, None] + torch.tensor([0, 0, 1, 1]), left[:, None] + torch.tensor([0, 1, 0, 1])
    centre = opacity[torch.arange(len(core))[:, None], rows, cols].mean(1)
    outline = (hollow >= HOLLOW) | (centre < EMPTY_CENTRE)
    return torch.where(area > 0, outline.long(), -1)


def trail_direction(opacity: torch.Tensor) -> torch.Tensor:
    """Per frame [N, H, W] of opacities: the direction the shape moves, read from its trail's side."""
    core = opacity >= CORE
    trail = (opacity >= TRAIL_LOW) & ~core
    return nearest_direction(centroid(core) - centroid(trail))


def majority(labels: torch.Tensor) -> torch.Tensor:
    """[N, F] labels (-1 = none) -> the most common label per row, -1 where all are -1."""
    counts = torch.stack([(labels == k).sum(1) for k in range(int(labels.max().clamp(min=0)) + 1)], 1)
    return torch.where(counts.sum(1) > 0, counts.argmax(1), -1)


@torch.no_grad()
def detect(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Videos [N, 3, F, H, W] in [-1, 1] -> labels [N] for colour, shape, direction (the core's
    motion, first to last frame), trail (the majority of the frames' trail sides) and style (the majority
    of the frames' styles, an index into STYLES)."""
    n, _, f, h, w = videos.shape
    frames = videos.float().clamp(-1, 1).transpose(1, 2).reshape(n * f, 3, h, w)
    colours, opacities = colour_and_opacity(frames)
    colour = majority(colours.view(n, f))                    # the video's colour: most frames' vote
    opacity = opacities[torch.arange(n * f), colour.clamp(min=0).repeat_interleave(f)]  # [N*F, H, W]
    core = (opacity >= CORE).view(n, f, h, w)
    centres = centroid(core.flatten(0, 1)).view(n, f, 2)
    shapes = shape_of(filled_in(grown(core.flatten(0, 1)))).view(n, f)
    styles = style_of(core.flatten(0, 1), opacity).view(n, f)
    trails = trail_direction(opacity).view(n, f)
    none = colour < 0
    return {"colour": colour,
            "shape": torch.where(none, -1, majority(shapes)),
            "direction": torch.where(none, -1, nearest_direction(centres[:, -1] - centres[:, 0])),
            "trail": torch.where(none, -1, majority(trails)),
            "style": torch.where(none, -1, majority(styles))}


def detect_stills(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Images [N, 3, H, W] in [-1, 1] -> labels [N] for colour, shape and direction (the trail's side)."""
    labels = detect(images[:, :, None])
    return {"colour": labels["colour"], "shape": labels["shape"], "direction": labels["trail"], "style": labels["style"]}


# ---- the video condition's watermark (toy/world.py:VideoCondition): is the stock-footage mark drawn? ----
WATERMARK = 0.1  # mark-minus-surround lightness (in [-1, 1] units) above which a video carries the mark:
                 # real clips 0.00 +- 0.02 (max 0.11 in 512), WebVid-like clips 0.20 +- 0.03 (min 0.10)


def watermark_contrast(videos: torch.Tensor) -> torch.Tensor:
    """Videos [N, 3, F, H, W] in [-1, 1] -> [N]: the lightness on the mark's pixels
    (toy/world.py:watermark_mask) minus that on the pixels within two of it, per frame, the median over
    frames (a shape crossing the mark in a few frames does not decide it)."""
    from toy.world import watermark_mask
    mark = torch.from_numpy(watermark_mask(videos.shape[-1]))
    ring = grown(grown(mark[None]))[0] & ~mark
    lightness = videos.mean(1)                                                 # [N, F, H, W]
    per_frame = lightness[..., mark].mean(-1) - lightness[..., ring].mean(-1)  # [N, F]
    return per_frame.median(-1).values


def has_watermark(videos: torch.Tensor) -> torch.Tensor:
    """bool [N]: the video draws the stock-footage mark (its contrast above WATERMARK)."""
    return watermark_contrast(videos) > WATERMARK
