"""Bad training data through the training command lines: every problem is one line naming the folder,
file or line, and comes before any model loads (the loader is replaced by one that fails the test)."""
import json

import numpy as np
import pytest
from PIL import Image

from runtime import cli
import train_adapter
import train_image
import train_video
from test_errors_training import Loaded, no_loading, run, world  # noqa: F401 - fixtures
from test_train import adapter_args, image_args, video_args


def images(folder, count=3, captions=True):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        if captions:
            (folder / f"{i}.txt").write_text(f"image {i}")
    return folder


def refused(main, argv, capsys) -> str:
    code, err = run(main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_missing_empty_and_caption_less_folders(world, tmp_path, capsys, no_loading):
    out = str(tmp_path / "out")
    err = refused(train_image.main, image_args(world, out, "--data", str(tmp_path / "nowhere")), capsys)
    assert f"--data {tmp_path / 'nowhere'}: no such file or folder" in err
    err = refused(train_image.main, image_args(world, out, "--data", ""), capsys)
    assert "--data is required" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.png").write_bytes(b"")
    err = refused(train_image.main, image_args(world, out, "--data", str(tmp_path / "empty")), capsys)
    assert f"{tmp_path / 'empty'}: no images found (image files .png, .jpg" in err
    folder = images(tmp_path / "uncaptioned", captions=False)
    err = refused(train_image.main, image_args(world, out, "--data", str(folder)), capsys)
    assert f"3 of 3 images in {folder} have no caption (0.png, 1.png, 2.png); give them a NAME.txt" in err
    (folder / "0.txt").write_bytes("caf\xe9".encode("latin-1"))
    err = refused(train_image.main, image_args(world, out, "--data", str(folder)), capsys)
    assert f"{folder / '0.txt'}: not UTF-8 text" in err and "save it as UTF-8" in err


@pytest.mark.parametrize("name,text,message", [
    ("captions.csv", "file,caption\n0.png,a dark one\n1.png\n", "captions.csv, line 3: needs two columns"),
    ("captions.csv", "0.png,a dark one\n", "captions.csv: needs a header row with the columns file,caption"),
    ("captions.jsonl", '{"file": "0.png", "caption": "a"}\n\n{"file": "1.png", caption: "b"}\n',
     "captions.jsonl, line 3: not JSON (Expecting property name enclosed in double quotes)"),
    ("captions.jsonl", '{"file": "0.png", "caption": "a"}\n{"file": "1.png"}\n',
     'captions.jsonl, line 2: needs the text fields "file" and "caption"'),
])
def test_a_bad_manifest_names_its_file_and_line(world, tmp_path, capsys, no_loading, name, text, message):
    folder = images(tmp_path / "data", captions=False)
    (folder / name).write_text(text)
    err = refused(train_image.main, image_args(world, tmp_path / "out", "--data", str(folder)), capsys)
    assert f"{folder / name}" in err and message in err


def test_overwrite_deletes_nothing_when_the_data_is_refused(world, tmp_path, capsys, no_loading):
    out = tmp_path / "run"
    out.mkdir()
    (out / "lora.safetensors").write_bytes(b"an earlier run's LoRA")
    (tmp_path / "empty").mkdir()
    err = refused(train_image.main, image_args(world, out, "--overwrite", "true", "--data", str(tmp_path / "empty")),
                  capsys)
    assert "no images found" in err and (out / "lora.safetensors").read_bytes() == b"an earlier run's LoRA"


def test_a_batch_larger_than_the_data(world, tmp_path, capsys, no_loading):
    err = refused(train_image.main, image_args(world, tmp_path / "out", "--batch", "8"), capsys)
    assert f"--batch 8 needs at least 8 images; {world / 'images'} has 3: lower --batch or add data" in err
    err = refused(train_video.main, video_args(world, tmp_path / "out", "--batch", "4"), capsys)
    assert f"--batch 4 needs at least 4 videos; {world / 'clips'} has 3" in err


def test_missing_control_videos(world, tmp_path, capsys, no_loading):
    controls = tmp_path / "controls"
    controls.mkdir()
    for i in (0, 2):
        (controls / f"clip{i}.gif").write_bytes((world / "controls" / f"clip{i}.gif").read_bytes())
    args = adapter_args(world, tmp_path / "out", "--adapter", "controlnet", "--control-data", str(controls))
    err = refused(train_adapter.main, args, capsys)
    assert f"1 of 3 videos have no control video of the same name in {controls}: clip1.gif" in err
    err = refused(train_adapter.main, adapter_args(world, tmp_path / "out", "--adapter", "controlnet"), capsys)
    assert "--adapter controlnet needs --control-data" in err
    err = refused(train_adapter.main, adapter_args(world, tmp_path / "out", "--adapter", "controlnet", "--control-data",
                                                    str(tmp_path / "nowhere")), capsys)
    assert f"--control-data {tmp_path / 'nowhere'}: no such file or folder" in err


def test_good_data_reaches_the_loader(world, tmp_path, no_loading):
    """The checks above are not refusing everything: the same folders, fixed, go on to load the models."""
    folder = images(tmp_path / "data", captions=False)
    (folder / "captions.jsonl").write_text("".join(json.dumps({"file": f"{i}.png", "caption": "x"}) + "\n"
                                                   for i in range(3)))
    for main, args in ((train_image.main, image_args(world, tmp_path / "a", "--data", str(folder))),
                       (train_video.main, video_args(world, tmp_path / "b", "--batch", "3")),
                       (train_adapter.main, adapter_args(world, tmp_path / "c", "--adapter", "controlnet",
                                                         "--control-data", str(world / "controls")))):
        with pytest.raises(Loaded):
            cli.run(main, args)
