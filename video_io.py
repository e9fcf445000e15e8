"""Reading and writing videos and images: GIF, WebP, MP4 (PyAV), or a folder of PNG frames.

Frames are uint8 arrays [F, H, W, 3] at the boundary; models see float tensors in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

VIDEO_SUFFIXES = (".gif", ".webp", ".mp4", ".webm", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write uint8 frames [F, H, W, 3] as .gif, .webp, .mp4, or PNG files in a folder (no suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in (".gif", ".webp", ".mp4"):
        raise ValueError(f"--out {path}: use a .gif, .webp or .mp4 file, or a folder name for PNG frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(frames, path, fps)
    elif suffix in (".gif", ".webp"):
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                       **({"lossless": True} if suffix == ".webp" else {}))
    else:
        path.mkdir(exist_ok=True)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"{i:04d}.png")
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
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
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in files[::stride][:max_frames]]
    elif path.suffix.lower() in (".gif", ".webp"):
        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)][::stride][:max_frames]
    else:
        import av
        with av.open(str(path)) as container:
            frames = []
            for i, frame in enumerate(container.decode(video=0)):
                if max_frames is not None and len(frames) >= max_frames:
                    break
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: no frames could be read")
    return np.stack(frames)


def read_image(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


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
