"""The training command lines when something goes wrong: bad flags, an --out that holds a run, a busy
--out, resumes with other settings, broken checkpoints, signals, a full disk, non-finite weights.

Most cases call `cli.run(main, argv)`, what `python train_*.py` runs, in this process, with the model
loader replaced by one that fails the test: every refusal must come before any model loads. The exit
codes of signals come from real subprocesses.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_adapter
import train_image
import train_teacher
import train_video
from runtime import cli
from runtime.weights import read_metadata
from test_errors_disk import error_line, run_with_file_limit
from test_train import adapter_args, image_args, log_records, video_args, world  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


class Loaded(Exception):
    """Raised by the stand-in loader: a model was about to load."""


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise Loaded
    for script in (train_image, train_video, train_adapter, train_teacher):
        monkeypatch.setattr(script, "load_sd15", refuse)


def run(main, argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of the command line `main` with `argv`, as its __main__ runs it."""
    code = cli.run(main, argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_flags_are_all_named_in_one_line_before_loading(world, tmp_path, capsys, no_loading):
    args = image_args(world, tmp_path / "x", "--save-every", "0", "--grad-accum", "0", "--loss", "l1",
                      "--precision", "fp8", "--lr", "nan", "--size", "30", "--steps", "0", "--device", "gpu",
                      "--ema-decay", "1", "--w-min", "9", "--w-max", "3", "--lr-anneal-at", "-1",
                      "--lr-anneal-factor", "2")
    code, err = run(train_image.main, args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    for problem in ("--save-every must be at least 1 (got 0)", "--grad-accum must be at least 1",
                    "--loss must be huber or l2 (got 'l1')", "--precision must be bf16 or fp16 or fp32",
                    "--lr must be a positive number (got nan)", "--size must be a positive multiple of 8",
                    "--steps must be at least 1", "--device 'gpu' is not a device", "--ema-decay must be in [0, 1)",
                    "--w-min 9.0 is above --w-max 3.0",
                    "--lr-anneal-at must be 0 or more (got -1)", "--lr-anneal-factor must be in (0, 1] (got 2.0)"):
        assert problem in err, problem
    assert not (tmp_path / "x").exists()  # nothing written either
    code, err = run(train_video.main, ["--data", str(world / "clips"), "--sd15", str(world / "nowhere.safetensors")],
                    capsys)
    assert code == 2 and f"--sd15 {world / 'nowhere.safetensors'}: no such file or folder" in err
    if not torch.cuda.is_available():
        code, err = run(train_adapter.main, adapter_args(world, tmp_path / "y", "--device", "cuda"), capsys)
        assert code == 2 and "--device cuda: no CUDA GPU is available on this machine; use --device cpu" in err
    code, err = run(train_teacher.main, adapter_args(world, tmp_path / "z", "--train", "controlnet", "--caption-dropout",
                                                     "2", "--loss-weight", "sqrt_snr"), capsys)
    assert code == 2 and "--caption-dropout must be in [0, 1] (got 2.0)" in err
    assert "--loss-weight must be uniform or sqrt_v or v (got 'sqrt_snr')" in err and not (tmp_path / "z").exists()


def test_boolean_flags_accept_only_true_or_false(world, tmp_path, capsys, no_loading):
    with pytest.raises(SystemExit) as exit:  # argparse: code 2 and its usage line
        train_image.main(image_args(world, tmp_path / "x", "--resume", "ture"))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--resume: expected true or false (or 1/0, yes/no), not 'ture'" in err
    for word in ("TRUE", "yes", "1", "False", "no", "0"):  # these still work: the loader is reached
        with pytest.raises(Loaded):
            train_image.main(image_args(world, tmp_path / word, "--gradient-checkpointing", word))


def test_an_out_that_holds_a_run_is_refused_unless_resumed_or_overwritten(world, tmp_path, capsys, no_loading):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "lora.safetensors").write_bytes(b"an earlier run's LoRA")
    code, err = run(train_image.main, image_args(world, out), capsys)
    assert code == 2 and f"--out {out} already holds a run (log.jsonl, lora.safetensors)" in err
    assert "--resume true" in err and "--overwrite true" in err
    code, err = run(train_image.main, image_args(world, out, "--resume", "true"), capsys)  # products, no checkpoint
    assert code == 2 and "no checkpoint.pt to continue from" in err
    assert (out / "lora.safetensors").read_bytes() == b"an earlier run's LoRA"  # nothing was touched
    code, err = run(train_image.main, image_args(world, out, "--resume", "true", "--overwrite", "true"), capsys)
    assert code == 2 and "pass one of them" in err
    with pytest.raises(Loaded):  # --overwrite true deletes the run's files, says so, and goes on
        train_image.main(image_args(world, out, "--overwrite", "true"))
    assert "removed the earlier run's log.jsonl, lora.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    (out / "notes.txt").write_text("the user's own file")  # not a run: no refusal
    with pytest.raises(Loaded):
        train_image.main(image_args(world, out))
    (tmp_path / "file").write_text("")
    code, err = run(train_image.main, image_args(world, tmp_path / "file"), capsys)
    assert code == 2 and "is a file; pass a folder" in err


def test_one_run_per_out_and_a_dead_runs_lock_is_no_obstacle(world, tmp_path, capsys, no_loading):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "run.lock").write_text("999999\n")  # left by a run that was killed: no process holds it
    with pytest.raises(Loaded):
        train_image.main(image_args(world, out))
    with open(out / "run.lock", "a+") as held:  # another run holds the lock now
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("4242\n")
        held.flush()
        code, err = run(train_video.main, video_args(world, out), capsys)
        assert code == 2 and f"--out {out} is in use by another run (process 4242)" in err
    with pytest.raises(Loaded):  # released: free again
        train_image.main(image_args(world, out))


def test_resume_lists_every_changed_setting_and_refuses_those_that_change_the_model(world, tmp_path, capsys):
    out = tmp_path / "resume"
    train_image.main(image_args(world, out, "--steps", "2", "--lora-rank", "4"))
    capsys.readouterr()
    code, err = run(train_image.main, image_args(world, out, "--steps", "3", "--lora-rank", "8", "--loss", "l2",
                                                  "--lr", "1e-3", "--resume", "true"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--lora-rank 8 (checkpoint: 4), --loss l2 (checkpoint: huber) would change" in err
    assert "these may change: --steps 3 (checkpoint: 2), --lr 0.001 (checkpoint: 0.0001)" in err
    # a crash after a log line but before the next save left a record past the checkpoint
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    train_image.main(image_args(world, out, "--steps", "3", "--lora-rank", "4", "--lr", "1e-3", "--resume", "true"))
    assert "resuming with changed settings: --steps 3 (checkpoint: 2), --lr 0.001 (checkpoint: 0.0001)" in \
        capsys.readouterr().out
    assert [r["step"] for r in log_records(out)] == [1, 2, 3] and log_records(out)[2]["loss"] != 1.0


def test_broken_or_malicious_checkpoints_are_refused_by_name(world, tmp_path, capsys, no_loading):
    out = tmp_path / "broken"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    code, err = run(train_image.main, image_args(world, out, "--resume", "true"), capsys)
    assert code == 2 and f"{out / 'checkpoint.pt'}: not a readable checkpoint" in err and "--overwrite true" in err

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)
    torch.save({"step": 1, "settings": {}, "online": Payload()}, out / "checkpoint.pt")
    code, err = run(train_image.main, image_args(world, out, "--resume", "true"), capsys)
    assert code == 2 and "refused to load" in err and "could run code" in err
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_that_does_not_fit_is_one_line(world, tmp_path, capsys):
    out = tmp_path / "misfit"
    train_image.main(image_args(world, out, "--steps", "1", "--lora-rank", "4"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["online"] = {k + ".renamed": v for k, v in state["online"].items()}  # as from another model
    torch.save(state, out / "checkpoint.pt")
    capsys.readouterr()
    code, err = run(train_image.main, image_args(world, out, "--steps", "2", "--lora-rank", "4", "--resume", "true"),
                    capsys)
    assert code == 2 and err.count("\n") == 1 and len(err) < 600
    assert f"{out / 'checkpoint.pt'} does not fit the model" in err


def test_weights_that_become_inf_are_never_written(world, tmp_path, capsys, monkeypatch):
    """An optimizer step that leaves an inf in the LoRA (the loss before it was finite): the save
    refuses, the previous save stays, the message says which step it holds."""
    step = torch.optim.AdamW.step

    def diverging_step(optimizer, *args, **kwargs):
        result = step(optimizer, *args, **kwargs)
        first = optimizer.param_groups[0]["params"][0]
        if optimizer.state[first]["step"] == 2:
            first.data.view(-1)[0] = float("inf")
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    out = tmp_path / "inf"
    code, err = run(train_image.main, image_args(world, out, "--steps", "3", "--lora-rank", "4", "--save-every", "1"),
                    capsys)
    assert code == 2 and "the weights became NaN or inf by step 2" in err and "not written" in err
    assert f"{out / 'checkpoint.pt'} holds step 1 (finite weights)" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1 and not list(out.glob("*.tmp"))
    assert json.loads(read_metadata(out / "lora.safetensors")["step"]) == 1  # the export was not replaced either
    from runtime.weights import NonFiniteError, save_safetensors
    with pytest.raises(NonFiniteError, match="x.safetensors: not written: 1 tensor"):
        save_safetensors({"a": torch.ones(2), "b": torch.tensor([0.0, float("nan")])}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_keeps_the_last_one_and_resumes_exactly(world, tmp_path):
    """The real `python train_image.py`, continuing a run whose step-1 checkpoint exists, with no file allowed
    to grow to the size of a checkpoint: step 2's save fails (torch's zip writer under it). One line says which
    file, why, what checkpoint.pt holds and how to go on; it is untouched and no temporary file is left; once
    there is room, --resume true ends bit for bit where a run that never stopped ends."""
    out = tmp_path / "full"
    args = image_args(world, out, "--lora-rank", "4", "--save-every", "1")
    train_image.main(args + ["--steps", "1"])
    before = (out / "checkpoint.pt").read_bytes()
    full = run_with_file_limit(len(before) // 2, ROOT / "train_image.py", *args, "--steps", "2", "--resume", "true")
    checkpoint = out / "checkpoint.pt"
    assert error_line(full) == (f"error: could not write {checkpoint}: file too large (a file-size limit, or a full "
                                f"disk); nothing partial was left, and {checkpoint} holds step 1 (finite weights): "
                                "free some space, then continue with --resume true")
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl", "lora.safetensors", "run.lock"]
    resumed = train_image.main(args + ["--steps", "2", "--resume", "true"])
    straight = train_image.main(image_args(world, tmp_path / "straight", "--lora-rank", "4", "--steps", "2"))
    for name, value in straight["lora"].state_dict().items():
        assert torch.equal(value, resumed["lora"].state_dict()[name]), name
    assert [r["step"] for r in log_records(out)] == [1, 2]


def test_sigint_saves_and_exits_130_saying_how_to_resume(world, tmp_path):
    args = image_args(world, tmp_path / "int", "--steps", "40", "--lora-rank", "4", "--save-every", "1000")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_image.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log = tmp_path / "int" / "log.jsonl"
    deadline = time.time() + 180
    while proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    step = torch.load(tmp_path / "int" / "checkpoint.pt", weights_only=True)["step"]
    assert proc.returncode == 130, err[-2000:]
    assert f"stopped by SIGINT at step {step} of 40" in err and "--resume true" in err and "Traceback" not in err


def test_a_bad_command_line_is_one_line_without_a_traceback(world, tmp_path):
    """The real `python train_video.py`: an empty data folder, refused before loading, exit code 2."""
    (tmp_path / "empty").mkdir()
    args = video_args(world, tmp_path / "out")
    args[args.index("--data") + 1] = str(tmp_path / "empty")
    run_ = subprocess.run([sys.executable, str(ROOT / "train_video.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run_.returncode == 2 and "Traceback" not in run_.stderr
    assert run_.stderr.splitlines()[-1] == (f"error: {tmp_path / 'empty'}: no videos found (video files .gif, .webp, "
                                            ".mp4, .webm, .mov, .mkv or sub-folders of frame images; hidden files are "
                                            "left out)")


def test_toy_run_stops_non_zero_when_a_stage_is_interrupted(tmp_path, capsys, monkeypatch):
    from toy import run as toy_run

    def interrupted():
        raise cli.Interrupted("stopped by SIGINT at step 2 of 4; ...", 130)
    stage = tmp_path / "stage1"
    monkeypatch.setattr(toy_run, "stages", lambda *args: {"stage1": (stage / "lora.safetensors", interrupted)})
    code = cli.run(toy_run.main, ["--out", str(tmp_path), "--skip-eval", "--device", "cpu"])
    assert code == 130 and not (stage / "DONE").exists()
    assert "the stage1 stage was stopped with its checkpoint saved: run this command again" in capsys.readouterr().err
    assert cli.run(toy_run.main, ["--out", str(tmp_path / "gpu"), "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a device" in capsys.readouterr().err and not (tmp_path / "gpu").exists()


def test_the_toy_scripts_and_benchmarks_report_problems_in_one_line(tmp_path, capsys):
    """The sweeps (which run the training scripts), toy/health.py and a benchmark: exit code 2, one line,
    no traceback; the sweeps check --device and --weights before writing any data. (In this process, as
    their __main__ runs them; the real command line's codes are checked above.)"""
    import importlib
    commands = {"toy.studies.sweep_stage1": (["--variant", "a=", "--weights", str(tmp_path), "--out",
                                              str(tmp_path / "s1"), "--device", "gpu"], "--device 'gpu' is not a device"),
                "toy.studies.sweep_stage2": (["--weights", str(tmp_path), "--out", str(tmp_path / "s2")],
                                             f"--weights {tmp_path} lacks toy_sd15.safetensors, "),
                "toy.health": (["--sd15", str(tmp_path / "missing.safetensors")],
                               f"{tmp_path / 'missing.safetensors'}: no such file"),
                "benchmarks.bench_unet": (["--device", "gpu"], "--device 'gpu' is not a device")}
    for module, (args, message) in commands.items():
        code = cli.run(importlib.import_module(module).main, args)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (module, err[-2000:])
        assert err.count("\n") == 1 and message in err, (module, err)
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_a_sweep_stopped_by_a_signal_says_to_run_the_sweep_again():
    from toy.studies.compare import sweep_train

    def stopped(argv):
        raise cli.Interrupted("stopped by SIGTERM at step 2 of 4; ... continue with --resume true", 143)
    with pytest.raises(cli.Interrupted, match="^base's stage 1 was stopped with its checkpoint saved: run this "
                                              "command again to continue it$") as e:
        sweep_train(stopped, [], "base's stage 1")
    assert e.value.code == 143
