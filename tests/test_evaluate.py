"""evaluate.py end to end on the bundled toy model with tiny counts: results, the cache of videos, resuming
after an interruption, batching, and the one-line messages for what is missing."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
import sample
from test_errors_disk import error_line, run_with_file_limit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sample.TOY["sd15"].exists(), reason="needs the bundled toy model (toy/weights/)")


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    """12 real toy-world clips as GIF files, written by the world's own generator."""
    from toy.world import write_dataset
    folder = tmp_path_factory.mktemp("world")
    write_dataset(folder, 12, seed=3)
    return folder / "clips"


def tiny(out, real_clips, *extra) -> list[str]:
    return ["--out", str(out), "--prompt-limit", "2", "--videos-per-prompt", "1", "--steps", "1", "2",
            "--real-videos", str(real_clips), "--fvd-real", "10", "--batch", "1", *extra]


def counting(monkeypatch) -> list:
    """Record the (prompt, seed) pairs evaluate.py generates."""
    made, real = [], evaluate.uint8_videos

    def uint8_videos(model, request, prompts, seeds):
        made.extend((request.steps, p, s) for p, s in zip(prompts, seeds))
        return real(model, request, prompts, seeds)
    monkeypatch.setattr(evaluate, "uint8_videos", uint8_videos)
    return made


def rows(out: Path) -> list[tuple]:
    return [(r["method"], r["sampler"], r["steps"], r["fvd"], r["prompt-accuracy"], r["videos"], r["fvd_real"])
            for r in json.loads((out / "results.json").read_text())["rows"]]


def test_end_to_end_then_resume_after_an_interruption(tmp_path, real_clips, monkeypatch, capsys):
    made = counting(monkeypatch)
    assert evaluate.main(tiny(tmp_path / "a", real_clips)) == 0
    assert len(made) == 4  # 2 prompts x 1 video x 2 step counts
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [(r["steps"], r["videos"], r["fvd_generated"], r["fvd_real"]) for r in results["rows"]] == \
        [(1, 2, 2, 10), (2, 2, 2, 10)]
    assert all(r["fvd"] > 0 and 0 <= r["prompt-accuracy"] <= 1 for r in results["rows"])
    assert results["protocol"]["features"] == "toy-judge" and results["protocol"]["frames"] == 8
    assert results["real_statistics"]["count"] == 10 and results["real_videos"] == str(real_clips.resolve())
    hashes = results["rows"][0]["model"]["sha256"]
    assert any(k.endswith("toy_motion.safetensors") and len(v) == 64 for k, v in hashes.items())
    table = (tmp_path / "a" / "results.txt").read_text()
    assert "| method | FVD 1 | FVD 2 | prompt-accuracy 1 | prompt-accuracy 2 |" in table
    assert "| toy_motion: LCM, no CFG |" in table and "toy_classifier.safetensors" in table
    folder = tmp_path / "a" / "videos" / "toy_motion"
    videos = sorted(folder.rglob("*.npy"))
    assert [p.relative_to(folder).as_posix() for p in videos] == [
        "lcm-1steps/p000-seed0.npy", "lcm-1steps/p001-seed1.npy", "lcm-2steps/p000-seed0.npy",
        "lcm-2steps/p001-seed1.npy"]
    assert np.load(videos[0]).shape == (8, 32, 32, 3)

    # interrupted while saving the second video: one video on disk, nothing half-written
    saved, real_save = [], evaluate.save_video

    def save_then_stop(frames, path):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(frames, path)
    monkeypatch.setattr(evaluate, "save_video", save_then_stop)
    assert evaluate.main(tiny(tmp_path / "b", real_clips)) == 130
    assert len(list((tmp_path / "b").rglob("*.npy"))) == 1 and not list((tmp_path / "b").rglob("*.tmp"))
    monkeypatch.setattr(evaluate, "save_video", real_save)
    made.clear()
    assert evaluate.main(tiny(tmp_path / "b", real_clips)) == 0
    assert len(made) == 3  # only the missing ones
    assert rows(tmp_path / "b") == rows(tmp_path / "a")

    # a video deleted: only it is made again, identical; a rerun with nothing missing generates nothing
    gone = tmp_path / "b" / "videos" / "toy_motion" / "lcm-2steps" / "p001-seed1.npy"
    before = np.load(gone)
    (stats,) = (tmp_path / "b").glob("real_statistics_*.npz")  # computed once, then read
    stamp = stats.stat().st_mtime_ns
    gone.unlink()
    made.clear()
    assert evaluate.main(tiny(tmp_path / "b", real_clips)) == 0
    assert made == [(2, "a red circle moving right", 1)]
    assert np.array_equal(np.load(gone), before) and rows(tmp_path / "b") == rows(tmp_path / "a")
    made.clear()
    assert evaluate.main(tiny(tmp_path / "b", real_clips)) == 0
    assert made == [] and "4 already in" in capsys.readouterr().out
    assert stats.stat().st_mtime_ns == stamp and len(list((tmp_path / "b").glob("real_statistics_*"))) == 1


def test_other_settings_for_the_same_videos_or_protocol_are_refused(tmp_path, real_clips, capsys):
    assert evaluate.main(tiny(tmp_path, real_clips)) == 0
    capsys.readouterr()
    assert evaluate.main(tiny(tmp_path, real_clips, "--guidance", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds videos made with other settings (guidance: 1.0 -> 2.0)" in err
    assert evaluate.main(tiny(tmp_path, real_clips, "--fvd-real", "8")) == 2
    assert "holds results made with other settings" in capsys.readouterr().err
    # another method (its own --name) adds its rows to the same table
    assert evaluate.main(tiny(tmp_path, real_clips, "--guidance", "2", "--name", "cfg2", "--sampler", "ddim")) == 0
    table = (tmp_path / "results.txt").read_text()
    assert "| toy_motion: LCM, no CFG |" in table and "| cfg2: DDIM, CFG 2 |" in table


def test_a_full_disk_at_the_results_is_one_line_and_keeps_the_earlier_ones(tmp_path, real_clips):
    """The real `python evaluate.py` run again on a finished evaluation, with no file allowed to grow to half the
    size of results.json (its settings files are smaller): one line names results.json and the cause; the
    earlier results.json and results.txt stay as they were, and no temporary file is left."""
    assert evaluate.main(tiny(tmp_path, real_clips)) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    results = tmp_path / "results.json"
    assert len(before[results]) // 2 > max(len(before[p]) for p in before if p.name.endswith("settings.json"))
    full = run_with_file_limit(len(before[results]) // 2, ROOT / "evaluate.py", *tiny(tmp_path, real_clips))
    assert error_line(full) == (f"error: could not write {results}: file too large (a file-size limit, or a full "
                                "disk); nothing partial was left: free some space (or choose another --out), then run "
                                "the same command again")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def toy_model():
    from sd15 import load_sd15
    toy = json.loads(sample.TOY["settings"].read_text())
    return load_sd15(str(sample.TOY["sd15"]), str(sample.TOY["motion"]), [(str(sample.TOY["lora"]), toy["lora_scale"])])


@pytest.mark.parametrize("sampler,guidance", [("lcm", 1.0), ("ddim", 2.5), ("dpmpp_2m", 1.0)])
def test_a_video_is_sample_pys_video_whatever_the_batch(toy_model, sampler, guidance):
    """Alone, exactly pipeline.generate's video for that prompt and seed; in a batch, within one level."""
    from lcm.schedule import NoiseSchedule
    from pipeline import Request, generate
    from media.video import to_uint8
    request = Request(prompt="", frames=8, height=32, width=32, steps=2, sampler=sampler, guidance=guidance,
                      original_steps=50, schedule=NoiseSchedule("beta_linear"), progress=False)
    prompts, seeds = ["a red circle moving left", "a blue square moving up"], [5, 6]
    expected = [to_uint8(generate(toy_model, Request(**{**request.__dict__, "prompt": p, "seed": s}))[0])
                for p, s in zip(prompts, seeds)]
    alone = [evaluate.uint8_videos(toy_model, request, [p], [s])[0] for p, s in zip(prompts, seeds)]
    batched = evaluate.uint8_videos(toy_model, request, prompts, seeds)
    for e, a, b in zip(expected, alone, batched):
        assert np.array_equal(a, e)
        assert np.abs(b.astype(int) - e).max() <= 1 and (b != e).mean() < 1e-3
    assert not np.array_equal(batched[0], batched[1])


def test_protocol_defaults_are_the_papers():
    p = evaluate.PROTOCOLS["ucf101"]
    assert (p.videos_per_prompt, p.frames, p.height, p.width) == (24, 16, 512, 512)
    assert (p.fvd_generated, p.fvd_real) == (2048, 2048)
    assert (p.features, p.prompt_score, p.resize, p.steps) == ("i3d-logits", "clipsim", "squash", (1, 2, 4, 8))
    prompts = evaluate.read_prompts(p.prompts)
    assert len(prompts) == 101 and len(set(prompts)) == 101
    assert prompts[0] == "A girl applying eye makeup." and prompts[-1] == "A person performing yo-yo tricks."
    assert len(evaluate.read_prompts("toy")) == 42


def test_missing_weights_are_one_line_through_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--protocol", "ucf101", "--out", str(tmp_path),
                             "--clip", str(tmp_path / "none.bin")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--i3d is missing: pass i3d_pretrained_400.pt, the I3D Kinetics-400 weights" in result.stderr
    assert f"--clip {tmp_path / 'none.bin'}: no such file or folder; expected the open_clip weights" in result.stderr
    assert "--real-videos is missing: pass a folder of real clips" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("extra,message", [
    (["--image", "x.png"], "--image: not used by evaluate.py"),
    (["--steps", "0", "2"], "--steps must be at least 1 (got 0)"),
    (["--videos-per-prompt", "0"], "--videos-per-prompt must be at least 1 (got 0)"),
    (["--prompts", "nowhere.yaml"], "--prompts nowhere.yaml: no such file"),
    (["--judge", "nowhere.safetensors"], "--judge nowhere.safetensors: no such file or folder; expected the toy"),
    (["--real-videos", "nowhere"], "--real-videos nowhere: no such file or folder"),
    (["--steps", "60"], "the LCM grid has 50"),
])
def test_bad_flags_are_refused_before_any_weights_load(tmp_path, monkeypatch, capsys, extra, message):
    import sd15

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded")
    monkeypatch.setattr(sd15, "load_sd15", refuse)
    assert evaluate.main(["--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_the_paper_protocol_path_runs_with_i3d_and_clip_files(tmp_path, monkeypatch):
    """The UCF-101 protocol's machinery on the toy model: I3D logits (random weights in the published
    layout) for FVD, CLIPSIM from an open_clip weights file (a tiny registered architecture), real clips
    read from a folder; 9 frames, the fewest I3D takes."""
    import open_clip
    import torch
    from collections import OrderedDict
    from conftest import load_manifest
    from test_clipsim import TINY
    from toy.world import write_dataset
    from metrics.i3d import InceptionI3d
    torch.manual_seed(0)
    keys = load_manifest("i3d_pretrained_400")["keys"]
    model = InceptionI3d()
    for module in model.modules():  # variance-keeping random weights, so features differ between videos
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight)
    state = OrderedDict((k, v) for k, v in model.state_dict().items() if k in keys)
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")
    (tmp_path / "tiny-clip-eval.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "tiny-clip-eval.json")
    torch.save(open_clip.create_model("tiny-clip-eval").state_dict(), tmp_path / "clip.bin")
    write_dataset(tmp_path / "world", 5, frames=9, seed=4)
    (tmp_path / "world" / "clips" / "00000.gif").write_bytes(b"not a video")  # skipped, counted
    args = ["--protocol", "ucf101", "--out", str(tmp_path / "out"), "--prompts", "toy", "--prompt-limit", "2",
            "--videos-per-prompt", "1", "--steps", "2", "--frames", "9", "--height", "32", "--width", "32",
            "--sd15", str(sample.TOY["sd15"]), "--motion", str(sample.TOY["motion"]), "--lora", str(sample.TOY["lora"]),
            "--original-steps", "50", "--i3d", str(tmp_path / "i3d_pretrained_400.pt"),
            "--clip", str(tmp_path / "clip.bin"), "--clip-model", "tiny-clip-eval",
            "--real-videos", str(tmp_path / "world" / "clips"), "--batch", "2"]
    assert evaluate.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["rows"]
    assert np.isfinite(row["fvd"]) and row["fvd"] > 1 and -100 <= row["clipsim"] <= 100
    assert (row["videos"], row["fvd_generated"], row["fvd_real"]) == (2, 2, 4)
    assert results["real_statistics"]["skipped"] == 1 and results["clip_model"] == "tiny-clip-eval"
    assert {Path(k).name for k in results["sha256"]} == {"i3d_pretrained_400.pt", "clip.bin"}
    assert list((tmp_path / "out" / "videos" / "toy_motion" / "lcm-2steps").glob("*.mp4"))  # the ucf101 default
    assert "i3d-logits (frames to 224x224 by squash)" in (tmp_path / "out" / "results.txt").read_text()


def test_the_toy_judge_scores_real_clips_by_their_prompts_and_refuses_other_sizes():
    """The toy protocol's measures (toy/classifier.py:judge_measures): real clips score 1 against their own
    captions and less against shuffled ones; 64-d features per video; other video sizes are one clear error."""
    from runtime.cli import UserError
    from toy.classifier import judge_measures
    from toy.world import SEEN, sample_videos
    embedder, scorer = judge_measures(sample.TOY["sd15"].parent / "toy_classifier.safetensors", 8)
    videos, _, clips = sample_videos(16, 7, SEEN)
    captions = [c.caption for c in clips]
    assert embedder.embed(list(videos)).shape == (16, 64)
    assert scorer.score(list(videos), captions).mean() >= 0.9
    assert scorer.score(list(videos), captions[1:] + captions[:1]).mean() < 0.5
    with pytest.raises(UserError, match=r"the toy judge reads 8-frame 32x32 videos; got \[\(4, 32, 32, 3\)\]"):
        scorer.score([v[:4] for v in videos], captions)
