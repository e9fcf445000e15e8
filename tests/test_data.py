"""Captioned image/video folders, clip sampling, skipping bad files, and the resumable sampler."""
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.cli import UserError
from media.data import ImageCaptionDataset, ResumableSampler, VideoCaptionDataset, collate
from media.video import resize_crop, to_model, write_video


def clip(n: int, h: int = 40, w: int = 48, channel: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: frame i's top half has value 20 * i + 10 in `channel`; a square moves below."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, channel] = 20 * i + 10
        frames[i, h - 12:h - 4, 2 * i:2 * i + 8] = 255
    return frames


def frame_numbers(video: torch.Tensor, channel: int = 0, low: float = -1) -> list[int]:
    """Decode the frame index from each frame's top half: video [3, F, H, W] in [low, 1]."""
    values = (video[channel, :, : video.shape[2] // 3] - low) / (1 - low) * 255  # [F, H/3, W]
    return [round((v.median().item() - 10) / 20) for v in values]


@pytest.fixture
def videos(tmp_path):
    """A 12-frame gif (sidecar), 12-frame mp4 (csv), a frame folder (jsonl) and a 6-frame gif (sidecar)."""
    folder = tmp_path / "videos"
    write_video(clip(12), folder / "a.gif", fps=8)
    (folder / "a.txt").write_text("a gif\n")
    write_video(clip(12), folder / "b.mp4", fps=8)
    (folder / "captions.csv").write_text('file,caption\nb.mp4,"an mp4, with a comma"\n')
    write_video(clip(12), folder / "c", fps=8)
    (folder / "captions.jsonl").write_text(json.dumps({"file": "c", "caption": "a frame folder"}) + "\n")
    write_video(clip(6), folder / "d.gif", fps=8)
    (folder / "d.txt").write_text("a short gif")
    return folder


def test_images_shapes_ranges_captions_and_crop(tmp_path):
    rng = np.random.default_rng(0)
    wide, tall = rng.integers(0, 256, (40, 48, 3), np.uint8), rng.integers(0, 256, (50, 30, 3), np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("a wide image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(tall).save(tmp_path / "sub" / "tall.jpg", quality=100)
    rows = [{"file": "sub/tall.jpg", "caption": "a tall one"}, {"file": "wide.png", "caption": "the sidecar wins"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    dataset = ImageCaptionDataset(tmp_path, size=32)
    assert len(dataset) == 2
    tall_item, wide_item = dataset[0], dataset[1]  # sorted by path: sub/tall.jpg, wide.png
    assert (tall_item["caption"], wide_item["caption"]) == ("a tall one", "a wide image")
    for item in (tall_item, wide_item):
        assert item["pixels"].shape == (3, 32, 32) and item["pixels"].dtype == torch.float32
        assert -1 <= item["pixels"].min() and item["pixels"].max() <= 1
    torch.testing.assert_close(wide_item["pixels"], to_model(resize_crop(wide[None], 32, 32))[0, :, 0])
    batch = collate([tall_item, wide_item])
    assert batch["pixels"].shape == (2, 3, 32, 32) and batch["captions"] == ["a tall one", "a wide image"]
    assert "control" not in batch
    assert dataset[5]["caption"] == wide_item["caption"]  # keys wrap around


def test_videos_shapes_captions_and_stride(videos):
    dataset = VideoCaptionDataset(videos, frames=4, stride=3, size=24)
    assert [p.name for p in dataset.files] == ["a.gif", "b.mp4", "c", "d.gif"]
    items = [dataset[i] for i in range(4)]
    assert [item["caption"] for item in items] == ["a gif", "an mp4, with a comma", "a frame folder", "a short gif"]
    for item in items:
        assert item["pixels"].shape == (3, 4, 24, 24) and item["pixels"].dtype == torch.float32
        assert -1 <= item["pixels"].min() and item["pixels"].max() <= 1
        numbers = frame_numbers(item["pixels"])
        assert 0 <= numbers[0] and numbers[-1] < 12
        assert np.diff(numbers).tolist() == ([3, 3, 3] if item["caption"] != "a short gif" else [1, 1, 1])
    assert frame_numbers(items[3]["pixels"])[0] in (0, 1, 2)  # 6 frames: stride 1 is the largest that fits
    assert collate(items)["pixels"].shape == (4, 3, 4, 24, 24)


def test_clip_start_is_deterministic_per_key_and_changes_across_epochs(videos):
    dataset = VideoCaptionDataset(videos, frames=3, stride=2, size=16, seed=5)
    again = VideoCaptionDataset(videos, frames=3, stride=2, size=16, seed=5)
    for key in (1, 9, 21):
        torch.testing.assert_close(dataset[key]["pixels"], again[key]["pixels"])
    # key 1 + 4 e is always b.mp4; its start (0..7) is drawn anew for each epoch e
    starts = [frame_numbers(dataset[1 + 4 * e]["pixels"])[0] for e in range(8)]
    assert len(set(starts)) > 2 and all(0 <= s <= 7 for s in starts)
    other_seed = VideoCaptionDataset(videos, frames=3, stride=2, size=16, seed=6)
    assert starts != [frame_numbers(other_seed[1 + 4 * e]["pixels"])[0] for e in range(8)]


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    write_video(clip(12), tmp_path / "good.gif", fps=8)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 50)
    write_video(clip(2), tmp_path / "short.gif", fps=8)  # fewer frames than asked for
    write_video(clip(12), tmp_path / "truncated.mp4", fps=8)
    data = (tmp_path / "truncated.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    for name in ("good", "bad", "short", "truncated"):
        (tmp_path / f"{name}.txt").write_text(name)
    dataset = VideoCaptionDataset(tmp_path, frames=4, stride=1, size=16)
    assert [p.name for p in dataset.files] == ["bad.mp4", "good.gif", "short.gif", "truncated.mp4"]
    with pytest.warns(UserWarning, match=r"skipping corrupt file .*bad\.mp4 \(.*\); 1 skipped so far"):
        assert dataset[0]["caption"] == "good"
    with pytest.warns(UserWarning) as record:
        item = dataset[2]  # short.gif, truncated.mp4, (wrap around) bad.mp4 known bad, good.gif
    assert item["caption"] == "good" and item["pixels"].shape == (3, 4, 16, 16)
    assert [str(w.message).split(str(tmp_path) + "/")[-1] for w in record] == [
        "short.gif (only 2 frames, need 4); 2 skipped so far",  # a short clip is not called corrupt
        "truncated.mp4 (ValueError: no video stream); 3 skipped so far"]
    assert [str(w.message).split(" ")[1] for w in record] == ["short", "corrupt"]
    assert {p.name for p in dataset.skipped} == {"bad.mp4", "short.gif", "truncated.mp4"}
    assert dataset[7]["caption"] == "good"  # no new warning: known bad files are passed over

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(clip(1)[0]).save(images / "good.png")
    data = (images / "good.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    (images / "captions.csv").write_text("file,caption\ngood.png,fine\ntruncated.png,cut\n")
    dataset = ImageCaptionDataset(images, size=16)
    with pytest.warns(UserWarning, match="truncated.png"):
        assert dataset[1]["caption"] == "fine"
    (images / "good.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning) as record, pytest.raises(UserError, match="none of the 2 images"):
        ImageCaptionDataset(images, size=16)[0]
    assert len(record) == 2 and "2 skipped so far" in str(record[1].message)


def test_control_videos_use_the_same_frames(videos, tmp_path):
    controls = tmp_path / "controls"
    write_video(clip(12, 30, 30, channel=1), controls / "a.webp", fps=8)  # another suffix and size
    write_video(clip(12, channel=1), controls / "b.mp4", fps=8)
    write_video(clip(12, channel=1), controls / "c", fps=8)
    write_video(clip(6, channel=1), controls / "d", fps=8)
    dataset = VideoCaptionDataset(videos, frames=4, stride=2, size=16, control_folder=controls)
    for key in range(8):
        item = dataset[key]
        assert item["control"].shape == (3, 4, 16, 16) and item["control"].dtype == torch.float32
        assert 0 <= item["control"].min() and item["control"].max() <= 1
        assert frame_numbers(item["control"], channel=1, low=0) == frame_numbers(item["pixels"])
    assert collate([dataset[0], dataset[1]])["control"].shape == (2, 3, 4, 16, 16)

    (controls / "b.mp4").unlink()
    with pytest.raises(ValueError, match=r"1 of 4 videos have no control video .*: b\.mp4"):
        VideoCaptionDataset(videos, control_folder=controls)


def test_missing_captions_and_empty_or_missing_folders(tmp_path):
    for i in range(7):
        Image.fromarray(clip(1)[0]).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("captioned")
    with pytest.raises(ValueError, match=r"6 of 7 images .* no caption \(1.png, 2.png, 3.png, 4.png, 5.png, "
                                         r"\.\.\.\); give them a NAME.txt .*captions.csv.*captions.jsonl"):
        ImageCaptionDataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos found"):
        VideoCaptionDataset(tmp_path / "empty")
    with pytest.raises(UserError, match="no such folder"):
        ImageCaptionDataset(tmp_path / "nowhere")


def batches(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_epochs_are_permutations_of_distinct_keys():
    sampler = ResumableSampler(10, batch=3, seed=1)
    assert sampler.per_epoch == 3  # one item per epoch is dropped
    epochs = [sum(batches(sampler, 9)[3 * e:3 * e + 3], []) for e in range(3)]
    for e, keys in enumerate(epochs):
        assert len(set(keys)) == 9 and all(e * 10 <= k < (e + 1) * 10 for k in keys)
    assert [k % 10 for k in epochs[0]] != [k % 10 for k in epochs[1]]
    assert batches(ResumableSampler(10, 3, seed=1), 9) == batches(sampler, 9)
    assert batches(ResumableSampler(10, 3, seed=2), 3) != batches(sampler, 3)
    with pytest.raises(ValueError, match="need at least 8 items for batch 4 on 2 processes"):
        ResumableSampler(7, 4, seed=0, world=2)


def test_sampler_ranks_and_resume():
    whole = batches(ResumableSampler(11, batch=4, seed=3), 12)
    ranks = [batches(ResumableSampler(11, batch=2, seed=3, rank=r, world=2), 12) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == whole
    assert whole == [ResumableSampler(11, 4, seed=3).global_batch(g) for g in range(12)]
    for start in (1, 2, 5):
        assert batches(ResumableSampler(11, 2, seed=3, rank=1, world=2, start=start), 12 - start) == ranks[1][start:]


def test_sampler_in_a_dataloader_with_workers(videos):
    dataset = VideoCaptionDataset(videos, frames=2, stride=2, size=8)
    sampler = ResumableSampler(len(dataset), batch=2, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    got = list(itertools.islice(iter(loader), 5))  # crosses into the third epoch
    for batch, keys in zip(got, batches(sampler, 5)):
        want = collate([dataset[k] for k in keys])
        assert batch["captions"] == want["captions"]
        torch.testing.assert_close(batch["pixels"], want["pixels"])
