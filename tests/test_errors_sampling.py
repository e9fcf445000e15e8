"""sample.py when something is wrong: every flag, input and output problem is one line and exit code 2,
found before any weights load (the loader is replaced by one that fails the test); frame folders are
never left holding an earlier video's frames."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
import sd15
from test_sample_cli import run as generate, weights  # noqa: F401 - fixture
from media.video import read_video, write_video
from test_errors_disk import error_line, run_with_file_limit

ROOT = Path(__file__).resolve().parents[1]


class Loaded(Exception):
    pass


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Weight files that exist (their contents never matter: nothing may load) and some inputs."""
    def refuse(*args, **kwargs):
        raise Loaded
    monkeypatch.setattr(sd15, "load_sd15", refuse)
    for name in ("sd15.safetensors", "motion.safetensors"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "video.mp4").write_bytes(b"not a video" * 20)
    write_video(np.arange(3, dtype=np.uint8).repeat(16 * 16 * 3).reshape(3, 16, 16, 3) * 80, tmp_path / "short.gif",
                fps=8)  # 3 distinct frames (a GIF merges equal ones)
    (tmp_path / "taken.gif").mkdir()
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0000.png").write_bytes(b"")
    (tmp_path / "frames" / "my_notes.txt").write_text("")
    return tmp_path


def refused(files, capsys, *extra) -> str:
    args = ["--sd15", str(files / "sd15.safetensors"), "--motion", str(files / "motion.safetensors"),
            "--height", "32", "--width", "32", "--frames", "4", "--out", str(files / "out.gif"), *extra]
    code = sample.main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("extra,message", [
    (["--height", "0"], "--height and --width must be positive multiples of 8 (got 0x32)"),
    (["--width", "0"], "(got 32x0)"),
    (["--frames", "0"], "--frames must be at least 1 (got 0)"),
    (["--steps", "0"], "--steps must be at least 1 (got 0)"),
    (["--fps", "0"], "--fps must be at least 1 (got 0)"),
    (["--decode-chunk", "0"], "--decode-chunk must be at least 1 (got 0)"),
    (["--guidance", "nan"], "--guidance must be at least 1 (got nan)"),
    (["--strength", "0"], "--strength must be in (0, 1] (got 0.0)"),
    (["--strength", "nan"], "--strength must be in (0, 1] (got nan)"),
    (["--motion-scale", "inf"], "--motion-scale must be a finite number (got inf)"),
    (["--context-frames", "4", "--context-overlap", "4"], "--context-overlap must be 0 or more and below"),
    (["--original-steps", "0"], "--original-steps must be between 1 and 1000"),
    (["--device", "gpu"], "--device 'gpu' is not a device: use cpu, cuda or cuda:N"),
    (["--steps", "2000", "--sampler", "ddim"], "--steps must be at most 1000, the noise schedule's length (got 2000)"),
    (["--steps", "300"], "300 steps need a grid of at least that many points; the LCM grid has 200"),
    (["--video", "{files}/short.gif", "--sampler", "ddim", "--strength", "0.2"],
     "strength 0.2 keeps int(4 * 0.2) = 0 of the 4 ddim steps; raise --strength to at least 0.25 or use more --steps"),
    (["--video", "{files}/short.gif", "--strength-convention", "diffusers", "--strength", "0.2"],
     "keeps int(4 * 0.2) = 0 of the 4 lcm steps"),
    (["--controlnet", "{files}/motion.safetensors", "--control", "{files}/short.gif", "--context-frames", "4"],
     "--control and --context-frames cannot be combined yet"),
])
def test_bad_numbers_and_devices(files, capsys, extra, message):
    """Also the steps --strength keeps and the flags the pipeline cannot combine: refused up front."""
    assert message in refused(files, capsys, *[arg.format(files=files) for arg in extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(files, capsys):
    assert "--device cuda: no CUDA GPU is available on this machine; use --device cpu" in \
        refused(files, capsys, "--device", "cuda")


def test_unusable_outputs(files, capsys):
    assert "--out x.avi: unknown video type '.avi'; use .gif, .webp or .mp4, or a folder for PNG frames " \
           "(end the name with / for a folder whose name has a dot)" in refused(files, capsys, "--out", "x.avi")
    err = refused(files, capsys, "--out", str(files / "notes.txt" / "out.gif"))
    assert f"{files / 'notes.txt'} is a file, not a folder" in err
    assert "is a folder; name a .gif" in refused(files, capsys, "--out", str(files / "taken.gif"))
    err = refused(files, capsys, "--out", str(files / "frames"))
    assert f"--out {files / 'frames'} holds other files (my_notes.txt); name an empty or new folder" in err
    err = refused(files, capsys, "--out", str(files / "video.mp4") + "/")  # a slash: a folder is meant
    assert "is a file; name a folder for PNG frames" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output(files, capsys):
    (files / "locked").mkdir(mode=0o500)
    assert "no permission to write there" in refused(files, capsys, "--out", str(files / "locked" / "x.gif"))


def test_unreadable_inputs(files, capsys):
    err = refused(files, capsys, "--image", str(files / "notes.txt"))
    assert f"{files / 'notes.txt'}: not a readable image (UnidentifiedImageError" in err
    err = refused(files, capsys, "--video", str(files / "video.mp4"))
    assert f"{files / 'video.mp4'}: not a readable video (InvalidDataError" in err
    err = refused(files, capsys, "--video", str(files / "short.gif"))
    assert f"--video {files / 'short.gif'} has 3 frames, fewer than --frames 4" in err


def test_argparse_refuses_unknown_dtypes(files, capsys):
    with pytest.raises(SystemExit) as exit:
        sample.main(["--sd15", str(files / "sd15.safetensors"), "--dtype", "fp8"])
    assert exit.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_good_flags_reach_the_loader(files):
    """The checks above are not refusing everything: valid flags go on to load the weights."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files / "first.png")
    for out in ("out.gif", "out_0.5", "x.gif.d/", "frames_new"):
        with pytest.raises(Loaded):
            sample.main(["--sd15", str(files / "sd15.safetensors"), "--height", "32", "--width", "32", "--out",
                         f"{files}/{out}", "--image", str(files / "first.png")])


def test_a_folder_name_with_a_dot_holds_frames_and_earlier_frames_are_replaced(weights, tmp_path, capsys):
    out = tmp_path / "out_0.5"
    assert generate(weights, tmp_path, "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:04d}.png" for i in range(5)]
    capsys.readouterr()
    write_video(np.zeros((8, 32, 48, 3), np.uint8), out, fps=8)  # an earlier, longer video
    assert generate(weights, tmp_path, "--out", str(out), "--frames", "3") == 0
    assert "; replaced the 8 frames of an earlier video there" in capsys.readouterr().out
    assert read_video(out).shape == (3, 32, 48, 3) and len(list(out.iterdir())) == 3


def test_the_command_line_reports_all_problems_in_one_line(tmp_path):
    """The real `python sample.py`: exit code 2, one line on stderr, no traceback, nothing loaded."""
    run = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--sd15", str(tmp_path / "missing.safetensors"),
                          "--height", "0", "--device", "gpu", "--out", str(tmp_path / "x.avi")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    line = run.stderr.splitlines()[-1]
    for problem in ("--height and --width", "--device 'gpu'", "unknown video type '.avi'",
                    f"--sd15 {tmp_path / 'missing.safetensors'}: no such file or folder"):
        assert problem in line, problem


def test_a_full_disk_leaves_no_video_and_says_so_in_one_line(weights, tmp_path):
    """The real `python sample.py` with no file allowed past 1000 bytes: the GIF cannot be written. One line names
    it and the cause; no file is left that could pass for a result, neither the GIF nor a temporary one."""
    out = tmp_path / "out" / "boat.gif"
    full = run_with_file_limit(1000, ROOT / "sample.py", "--sd15", weights / "sd15.safetensors", "--motion",
                               weights / "t2v.safetensors", "--height", "32", "--width", "48", "--frames", "5",
                               "--steps", "2", "--out", out)
    assert error_line(full) == (f"error: could not write {out}: file too large (a file-size limit, or a full disk); "
                                "nothing partial was left: free some space (or choose another --out), then run the "
                                "same command again")
    assert os.listdir(out.parent) == []
