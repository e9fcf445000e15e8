"""A full disk: every write fails in one line naming the file and the cause in words, leaves nothing
partial and the earlier file as it was.

The real fault is simulated with a file-size limit (RLIMIT_FSIZE) in a subprocess: a write past it fails
with EFBIG, as a write on a full disk fails with ENOSPC. `run_with_file_limit` is used by the command-line
cases here and in test_errors_training.py (a checkpoint), test_errors_sampling.py (sample.py's video) and
test_evaluate.py (the results). The wording of the other causes is checked in this process."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media.video import read_video, write_video
from runtime.cli import WriteError
from runtime.files import append_text, write_output, write_text
from toy.constants import TOY_UNET
from unet.lora import LoRANetwork
from unet.model import UNet

ROOT = Path(__file__).resolve().parents[1]

# Runs `python SCRIPT ARGS...` under a file-size limit. SIGXFSZ would kill the process at the first write past
# the limit: ignored, the write fails with EFBIG instead. (Set in the child itself rather than by preexec_fn,
# which is unsafe in a parent with threads, as torch's are.)
LIMITED = """import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_with_file_limit(limit: int, script, *args) -> subprocess.CompletedProcess:
    """`python script args` where no file may grow past `limit` bytes (a full disk, as the program sees it)."""
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def error_line(run: subprocess.CompletedProcess) -> str:
    """The one line a failed command ends with (before it: only progress bars); exit code 2, no traceback."""
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], run.stderr[-3000:]
    return lines[-1]


EXPORT = """import sys
from runtime import cli
from toy.constants import TOY_UNET
from unet.lora import LoRANetwork
from unet.model import UNet

sys.exit(cli.run(lambda argv: LoRANetwork.create(UNet(TOY_UNET), 4, 4.0).save(argv[0]), sys.argv[1:]))
"""


def test_an_exported_lora_that_cannot_be_written(tmp_path):
    """A LoRA export (save_safetensors, what every exported weights file goes through) past the limit: safetensors'
    own error becomes the one line; the earlier export stays byte for byte, and no temporary file is left."""
    script, lora = tmp_path / "export.py", tmp_path / "out" / "lora.safetensors"
    script.write_text(EXPORT)
    LoRANetwork.create(UNet(TOY_UNET), 4, 4.0).save(lora)  # the earlier export
    before = lora.read_bytes()
    line = error_line(run_with_file_limit(len(before) // 2, script, lora))
    assert line == (f"error: could not write {lora}: file too large (a file-size limit, or a full disk); nothing "
                    "partial was left: free some space (or choose another --out), then run the same command again")
    assert lora.read_bytes() == before and os.listdir(lora.parent) == ["lora.safetensors"]


def failing_write(error: int):
    """A writer that puts half a file down, then fails as the operating system does."""
    def write(tmp: Path):
        tmp.write_bytes(b"half a fi")
        raise OSError(error, os.strerror(error), str(tmp))
    return write


@pytest.mark.parametrize("error,words,advice", [
    (errno.ENOSPC, "no space left on the device", "free some space (or choose another --out), then run the same"),
    (errno.EFBIG, "file too large (a file-size limit, or a full disk)", "free some space"),
    (errno.EACCES, "permission denied", "choose another --out you can write to, then run the same command again"),
    (errno.EROFS, "read-only file system", "choose another --out you can write to"),
])
def test_a_failed_write_names_the_file_and_the_cause_and_leaves_the_earlier_file(tmp_path, error, words, advice):
    path = tmp_path / "results.json"
    write_text(path, "the earlier results\n")
    with pytest.raises(WriteError) as failed:
        write_output(path, failing_write(error))
    message = str(failed.value)
    assert message.startswith(f"could not write {path}: {words}; nothing partial was left: ") and advice in message
    assert path.read_text() == "the earlier results\n" and os.listdir(tmp_path) == ["results.json"]
    retold = str(failed.value.retold("continue with --resume true", kept="checkpoint.pt holds step 4"))
    assert "; nothing partial was left, and checkpoint.pt holds step 4: " in retold
    assert retold.endswith(", then continue with --resume true") and "--out" not in retold


def test_a_log_line_that_cannot_be_written_is_cut_off_again(tmp_path, monkeypatch):
    """An append cannot go through a temporary file: a failed one is truncated back to the log's earlier end."""
    log = tmp_path / "log.jsonl"
    append_text(log, '{"step": 1}\n')
    real_open = open

    class FullDisk:  # writes part of the line, then the disk is full
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("runtime.files.open", FullDisk, raising=False)
    with pytest.raises(WriteError, match="could not write .*log.jsonl: no space left on the device"):
        append_text(log, '{"step": 2}\n')
    monkeypatch.undo()
    assert log.read_text() == '{"step": 1}\n'


def test_a_frame_folder_keeps_its_earlier_frames_when_a_frame_cannot_be_written(tmp_path, monkeypatch):
    out = tmp_path / "frames"
    earlier = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    write_video(earlier, out, fps=8)
    save = Image.Image.save

    def third_frame_fails(image, fp, *args, **kwargs):
        if Path(fp).name == "0002.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return save(image, fp, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", third_frame_fails)
    with pytest.raises(WriteError, match=f"could not write {out}: no space left on the device"):
        write_video(np.zeros((6, 8, 8, 3), np.uint8), out, fps=8)
    monkeypatch.undo()
    assert np.array_equal(read_video(out), earlier) and os.listdir(tmp_path) == ["frames"]
    write_video(np.full((2, 8, 8, 3), 7, np.uint8), out, fps=8)  # a shorter video replaces all of them
    assert sorted(os.listdir(out)) == ["0000.png", "0001.png"] and read_video(out).max() == 7


def test_toy_run_stops_in_one_line_when_a_stage_cannot_write(tmp_path, capsys, monkeypatch):
    """python -m toy.run: a stage whose write fails stops the run in one line saying to run it again (finished
    stages are kept); the stage is not marked done and times.json is not written."""
    from runtime import cli
    from toy import run as toy_run
    product = tmp_path / "data" / "clips" / "00000.gif"
    monkeypatch.setattr(toy_run, "stages", lambda *args: {
        "data": (product, lambda: write_output(product, failing_write(errno.ENOSPC)))})
    code = cli.run(toy_run.main, ["--out", str(tmp_path), "--skip-eval", "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err == (
        f"error: could not write {product}: no space left on the device; nothing partial was left: free some space, "
        "then run this command again to continue the data stage\n")
    assert os.listdir(tmp_path) == ["data"] and os.listdir(product.parent) == []
