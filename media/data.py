"""Training data: folders of captioned images or videos, and a resumable batch sampler.

A folder holds images (png, jpg, jpeg, webp, bmp) or videos (mp4, gif, webm, webp, mov, mkv files,
or one sub-folder of frame images per clip). Captions come from a sidecar NAME.txt beside each
file (SUBFOLDER.txt for a frame folder), or from a manifest in the folder: captions.csv with the
columns file,caption or captions.jsonl with {"file": ..., "caption": ...} per line, file paths
relative to the folder. A sidecar wins over the manifest.

The sampler yields *keys*, not indices: dataset[key] reads item key % len(dataset) and seeds its
clip's start frame with key, so every epoch sees another clip of each video, identically on resume.
Unreadable files and clips shorter than the frames asked for are skipped with a warning (see
`CaptionFolder.__getitem__`), never fatal. A missing, empty or caption-less folder, or a malformed
manifest, is a `UserError` when the dataset is made, before any model loads.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runtime.cli import UserError
from media.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, resize_crop, to_model

CAPTION_FORMATS = ("a NAME.txt beside each file, or a captions.csv (columns file,caption) or "
                   'captions.jsonl ({"file": ..., "caption": ...} per line) in the folder')


def read_manifest(folder: Path) -> dict[str, str]:
    """{relative path: caption} from captions.csv and captions.jsonl, where present; a malformed
    manifest is a UserError naming the file and the line."""
    captions = {}
    csv_file, jsonl_file = folder / "captions.csv", folder / "captions.jsonl"
    if csv_file.exists():
        reader = csv.DictReader(io.StringIO(read_text(csv_file), newline=""))
        try:
            if not {"file", "caption"} <= set(reader.fieldnames or ()):
                raise UserError(f"{csv_file}: needs a header row with the columns file,caption")
            for row in reader:
                if row["file"] is None or row["caption"] is None:
                    raise UserError(f"{csv_file}, line {reader.line_num}: needs two columns, file,caption "
                                    "(quote a caption that holds a comma)")
                if row["caption"]:
                    captions[Path(row["file"]).as_posix()] = row["caption"]
        except csv.Error as e:
            raise UserError(f"{csv_file}, line {reader.line_num}: {e}") from e
    if jsonl_file.exists():
        for number, line in enumerate(read_text(jsonl_file).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{jsonl_file}, line {number}: not JSON ({e.msg}); each line must be "
                                '{"file": ..., "caption": ...}') from e
            if not (isinstance(row, dict) and isinstance(row.get("file"), str) and isinstance(row.get("caption"), str)):
                raise UserError(f'{jsonl_file}, line {number}: needs the text fields "file" and "caption"')
            captions[Path(row["file"]).as_posix()] = row["caption"]
    return captions


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e


def load_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3]; like media/video.py:read_image, but an undecodable file raises PIL's own error, which
    CaptionFolder.__getitem__ turns into a skip with a warning."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a clip folder, in name order (as media/video.py:read_video reads them)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def frame_count(path: Path) -> int:
    if path.is_dir():
        return len(frame_files(path))
    if path.suffix.lower() in (".gif", ".webp"):
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1)
    import av
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        # mp4 stores the count; webm/mkv do not, so count packets (demuxing only, no decoding)
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]: only the frames at the given increasing indices."""
    if path.is_dir():
        files = frame_files(path)
        frames = [load_image(files[i]) for i in indices]
    elif path.suffix.lower() in (".gif", ".webp"):
        frames = []
        with Image.open(path) as im:
            for i in indices:
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB")))
    else:
        import av
        wanted, frames = set(indices), []
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if i == indices[-1]:
                    break
        if len(frames) < len(indices):
            raise ValueError(f"frame {indices[-1]} could not be decoded")
    return np.stack(frames)


class ShortClip(ValueError):
    """A clip with fewer frames than asked for: skipped like an unreadable one, but not called corrupt."""


def clip_indices(length: int, frames: int, stride: int, generator: torch.Generator) -> list[int]:
    """`frames` indices `stride` apart from a random start; the largest stride that fits if too short."""
    if length < frames:
        raise ShortClip(f"only {length} frames, need {frames}")
    stride = max(1, min(stride, (length - 1) // max(1, frames - 1)))
    span = (frames - 1) * stride + 1
    start = int(torch.randint(length - span + 1, (), generator=generator))
    return list(range(start, start + span, stride))


def list_images(folder: Path) -> list[Path]:
    """Image files in folder and its sub-folders (hidden ones left out)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_videos(folder: Path) -> list[Path]:
    """Video files and frame folders (sub-folders holding images) directly inside folder."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (
        p.suffix.lower() in VIDEO_SUFFIXES if p.is_file() else bool(frame_files(p))))


def listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


class CaptionFolder(torch.utils.data.Dataset):
    """The files `find(folder)` lists, with their captions; subclasses `load(path, key)` one."""
    kind, looked_for = "files", "files"

    def __init__(self, folder, find):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"{self.folder}: no such folder")
        self.files: list[Path] = find(self.folder)
        if not self.files:
            raise UserError(f"{self.folder}: no {self.kind} found ({self.looked_for}; hidden files are left out)")
        manifest = read_manifest(self.folder)
        self.captions, missing = {}, []
        for path in self.files:
            sidecar = path.parent / f"{path.name if path.is_dir() else path.stem}.txt"
            name = path.relative_to(self.folder).as_posix()
            if sidecar.exists():
                self.captions[path] = read_text(sidecar).strip()
            elif name in manifest:
                self.captions[path] = manifest[name].strip()
            else:
                missing.append(name)
        if missing:
            raise UserError(f"{len(missing)} of {len(self.files)} {self.kind} in {self.folder} have no caption "
                            f"({listing(missing)}); give them {CAPTION_FORMATS}")
        self.skipped: set[Path] = set()  # unreadable files met by this process

    def load(self, path: Path, key: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int) -> dict:
        # A bad file is recorded and replaced by the next good one; each file is tried at most once.
        for offset in range(len(self.files)):
            path = self.files[(key + offset) % len(self.files)]
            if path in self.skipped:
                continue
            try:
                return self.load(path, key + offset)
            except Exception as e:
                self.skipped.add(path)
                why = f"short clip {path} ({e})" if isinstance(e, ShortClip) else \
                    f"corrupt file {path} ({type(e).__name__}: {e})"
                warnings.warn(f"skipping {why}; {len(self.skipped)} skipped so far", stacklevel=2)
        raise UserError(f"none of the {len(self.files)} {self.kind} in {self.folder} could be read "
                        f"(see the warnings above)")


class ImageCaptionDataset(CaptionFolder):
    """Images (searched recursively) -> {"pixels": float [3, size, size] in [-1, 1], "caption": str}."""
    kind = "images"
    looked_for = f"image files {', '.join(IMAGE_SUFFIXES)}, in sub-folders too"

    def __init__(self, folder, size: int = 512):
        self.size = size
        super().__init__(folder, list_images)

    def load(self, path: Path, key: int) -> dict:
        image = resize_crop(load_image(path)[None], self.size, self.size)  # [1, size, size, 3]
        return {"pixels": to_model(image)[0, :, 0], "caption": self.captions[path]}


class VideoCaptionDataset(CaptionFolder):
    """Clips of `frames` frames `stride` apart, resized and centre-cropped to size x size.

    item: {"pixels": float [3, frames, size, size] in [-1, 1], "caption": str}, plus "control":
    float [3, frames, size, size] in [0, 1] with control_folder: the video of the same stem there
    (any video suffix or a frame folder), read at the same frame indices.
    """
    kind = "videos"
    looked_for = f"video files {', '.join(VIDEO_SUFFIXES)} or sub-folders of frame images"

    def __init__(self, folder, frames: int = 16, stride: int = 4, size: int = 256, seed: int = 0,
                 control_folder=None):
        self.frames, self.stride, self.size, self.seed = frames, stride, size, seed
        super().__init__(folder, list_videos)
        self.lengths: dict[Path, int] = {}  # frame counts, cached per process
        self.controls = None
        if control_folder is not None:
            control_folder = Path(control_folder)
            if not control_folder.is_dir():
                raise UserError(f"{control_folder}: no such folder")
            by_stem = {p.stem if p.is_file() else p.name: p for p in list_videos(control_folder)}
            stems = {p: p.stem if p.is_file() else p.name for p in self.files}
            missing = [p.name for p in self.files if stems[p] not in by_stem]
            if missing:
                raise UserError(f"{len(missing)} of {len(self.files)} videos have no control video of the same "
                                f"name in {control_folder}: {listing(missing)}")
            self.controls = {p: by_stem[stems[p]] for p in self.files}

    def load(self, path: Path, key: int) -> dict:
        if path not in self.lengths:
            self.lengths[path] = frame_count(path)
        # the start frame depends only on (seed, key): a resumed run reads identical clips
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        indices = clip_indices(self.lengths[path], self.frames, self.stride, generator)
        clip = resize_crop(read_frames(path, indices), self.size, self.size)  # [F, size, size, 3]
        item = {"pixels": to_model(clip)[0], "caption": self.captions[path]}
        if self.controls is not None:
            control = resize_crop(read_frames(self.controls[path], indices), self.size, self.size)
            item["control"] = torch.from_numpy(control).float().div(255).permute(3, 0, 1, 2)
        return item


class ResumableSampler(torch.utils.data.Sampler):
    """An endless batch sampler of dataset keys whose position is just the global batch number.

    Epoch e is a permutation of range(size) seeded by (seed, e), cut into size // (batch * world)
    global batches (the remainder is dropped); global batch g holds batch * world keys
    e * size + index, and rank r takes its r-th slice. Resuming after g global batches is start=g.
    """

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if size < batch * world:
            raise ValueError(f"need at least {batch * world} items for batch {batch} on {world} processes, "
                             f"have {size}")
        self.size, self.batch, self.seed, self.rank, self.world, self.start = size, batch, seed, rank, world, start
        self.per_epoch = size // (batch * world)
        self._epoch, self._order = None, None

    def global_batch(self, g: int) -> list[int]:
        """The keys of global batch g, all ranks' slices in rank order."""
        epoch, i = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator) + epoch * self.size
        n = self.batch * self.world
        return self._order[i * n:(i + 1) * n].tolist()

    def __iter__(self):
        g = self.start
        while True:
            yield self.global_batch(g)[self.rank * self.batch:(self.rank + 1) * self.batch]
            g += 1


def check_batch(dataset: CaptionFolder, batch: int, world: int) -> None:
    """Refuse a global batch larger than the data (before any model loads)."""
    if len(dataset) < batch * world:
        processes = f" on {world} processes" if world > 1 else ""
        raise UserError(f"--batch {batch}{processes} needs at least {batch * world} {dataset.kind}; "
                        f"{dataset.folder} has {len(dataset)}: lower --batch or add data")


def endless_batches(dataset: CaptionFolder, s, rank: int, world: int, start: int):
    """This process's share of every global batch, from global batch `start` on, forever (`ResumableSampler`);
    `s` gives --batch, --seed and --workers."""
    sampler = ResumableSampler(len(dataset), s.batch, s.seed, rank, world, start)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                            num_workers=s.workers))


def collate(items: list[dict]) -> dict:
    """{"pixels": [B, ...], "captions": [str], and "control": [B, ...] when the items have it}."""
    batch = {"pixels": torch.stack([item["pixels"] for item in items]),
             "captions": [item["caption"] for item in items]}
    if "control" in items[0]:
        batch["control"] = torch.stack([item["control"] for item in items])
    return batch
