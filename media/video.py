"""Reading and writing videos and images: GIF, WebP, MP4 (PyAV), or a folder of PNG frames.

Frames are uint8 arrays [F, H, W, 3] at the boundary; models see float tensors in [-1, 1]. A file
that cannot be read, or an output that could not be written, is a `cli.UserError` naming it. Videos,
frame folders and images are written whole or not at all (runtime/files.py): under a temporary name,
then renamed into place.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

from runtime.cli import UserError
from runtime.files import write_output

VIDEO_SUFFIXES = (".gif", ".webp", ".mp4", ".webm", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_SUFFIXES = (".gif", ".webp", ".mp4")
FRAME_NAME = re.compile(r"\d{4,}\.png")  # the frame files write_video puts in a folder: 0000.png, ...


def is_frame_folder(path: str | Path) -> bool:
    """An output path names a folder of PNG frames when it ends in a slash, is a folder already, or
    has no file-type suffix: none, or a number (`out_0.5`)."""
    suffix = Path(path).suffix.lower()
    if str(path).endswith(("/", os.sep)) or not suffix or suffix[1:].isdigit():
        return True
    return Path(path).is_dir() and suffix not in WRITE_SUFFIXES


def output_problem(path: str) -> str | None:
    """Why `write_video` could not write `path`, or None: checked before any model loads."""
    p, suffix = Path(path), Path(path).suffix.lower()
    folder = is_frame_folder(path)
    if not folder and suffix not in WRITE_SUFFIXES:
        return (f"--out {path}: unknown video type {suffix!r}; use .gif, .webp or .mp4, or a folder for PNG frames "
                f"(end the name with / for a folder whose name has a dot)")
    if folder and p.is_file():
        return f"--out {path} is a file; name a folder for PNG frames, or a .gif, .webp or .mp4 file"
    if not folder and p.is_dir():
        return f"--out {path} is a folder; name a .gif, .webp or .mp4 file, or end it with / for PNG frames"
    if folder and p.is_dir():
        others = sorted(q.name for q in p.iterdir() if not FRAME_NAME.fullmatch(q.name))
        if others:
            return (f"--out {path} holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                    "name an empty or new folder for the PNG frames")
    parent = next(q for q in p.parents if q.exists())
    if not parent.is_dir():
        return f"--out {path}: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return f"--out {path}: no permission to write there; choose another location"
    return None


def old_frames(path: str | Path) -> list[Path]:
    """The frame files of an earlier video in an output folder ([] for anything else)."""
    path = Path(path)
    if not (is_frame_folder(path) and path.is_dir()):
        return []
    return sorted(q for q in path.iterdir() if FRAME_NAME.fullmatch(q.name))


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write uint8 frames [F, H, W, 3] as .gif, .webp, .mp4, or PNG files in a folder (`is_frame_folder`),
    whole or not at all; a folder's frames of an earlier video are replaced, all of them."""
    problem = output_problem(str(path))
    if problem:
        raise UserError(problem)
    folder, path = is_frame_folder(path), Path(path)
    suffix = path.suffix.lower()
    if folder:
        return write_output(path, lambda tmp: _write_frames(frames, tmp, path))
    if suffix == ".mp4":
        return write_output(path, lambda tmp: _write_mp4(frames, tmp, fps))
    return write_output(path, lambda tmp: _write_animation(frames, tmp, fps, suffix[1:].upper()))


def write_image(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image [H, W, 3] (its format from the suffix: .png, ...), whole or not at all."""
    kind = Image.registered_extensions()[Path(path).suffix.lower()]
    return write_output(path, lambda tmp: Image.fromarray(image).save(tmp, format=kind))


def _write_frames(frames: np.ndarray, tmp: Path, folder: Path) -> None:
    """0000.png, ... in the new folder `tmp`; then the earlier video's frames in `folder` go, so that `tmp`
    can take its place (a failed write stops before: the earlier frames stay)."""
    tmp.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / f"{i:04d}.png", format="PNG")
    if folder.is_dir():
        for old in folder.iterdir():
            if FRAME_NAME.fullmatch(old.name):
                old.unlink()
        folder.rmdir()  # empty now: output_problem allows nothing but frames there


def _write_animation(frames: np.ndarray, path: Path, fps: int, kind: str) -> None:
    """An animated GIF or WebP (`kind`); the WebP lossless."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format=kind, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   **({"lossless": True} if kind == "WEBP" else {}))


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        # yuv420p (what every player reads) needs even sizes; pad by one pixel when odd.
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            if w % 2 or h % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | Path, max_frames: int | None = None, stride: int = 1) -> np.ndarray:
    """uint8 frames [F, H, W, 3] from a video file (gif, webp, mp4, webm, ...) or a folder of images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            frames = [read_image(p) for p in files[::stride][:max_frames]]
        elif path.suffix.lower() in (".gif", ".webp"):
            with Image.open(path) as im:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)][::stride][:max_frames]
        else:
            frames = _read_av(path, max_frames, stride)
    except (OSError, ValueError, EOFError) as e:  # PIL's and PyAV's errors for a file they cannot decode
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: not a readable video ({type(e).__name__}: {e})") from e
    if not frames:
        raise UserError(f"{path}: no frames could be read")
    return np.stack(frames)


def _read_av(path: Path, max_frames: int | None, stride: int) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as container:
        frames = []
        for i, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and len(frames) >= max_frames:
                break
            if i % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def read_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] of an image file; one that cannot be decoded is a UserError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (Lanczos) so the frames cover height x width, then centre-crop."""
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    out = [np.asarray(Image.fromarray(f).resize(size, Image.LANCZOS))[top:top + height, left:left + width]
           for f in frames]
    return np.stack(out)


def to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [1, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float [3, F, H, W] in [0, 1] -> uint8 [F, H, W, 3]."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
