"""The toy world: its data, its judge, the --quick pipeline end to end, and the shipped toy model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
from runtime.cli import UserError
from toy import run as toy_run
from toy.classifier import frechet_distance
from toy.constants import SHIPPED
from toy.run import KEPT_FROM_WEIGHTS
from toy.stages import QUICK
from toy.world import (ALL, COLOURS, HELD_OUT, SEEN, caption, clip_from_seed, parse_caption, render, write_dataset)

ROOT = Path(__file__).resolve().parents[1]


def test_world_is_deterministic_by_seed_and_masks_cover_the_shape():
    a, b = clip_from_seed(5), clip_from_seed(5)
    assert a == b and clip_from_seed(6) != a
    video, masks = render(a)
    assert video.shape == (8, 32, 32, 3) and masks.shape == (8, 32, 32)
    np.testing.assert_array_equal(render(b)[0], video)
    colour = np.array(COLOURS[a.colour])
    assert (video[masks > 0] == colour).all()              # the shape is drawn where its mask is
    assert (video[masks == 0] != colour).any(-1).all()     # and nowhere else
    centres = [np.argwhere(m > 0).mean(0) for m in masks]  # (row, col) of the shape per frame
    dy, dx = centres[-1] - centres[0]
    expected = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}[a.direction]
    assert expected, (a.direction, dx, dy)
    assert all(0 < m.sum() and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
               for m in masks)  # inside the frame throughout


def test_dataset_never_shows_held_out_combinations(tmp_path):
    assert set(HELD_OUT) <= set(ALL) and not set(HELD_OUT) & set(SEEN)
    for pair in ((0, 1), (0, 2), (1, 2)):  # every pair of attributes of a held-out combination is seen
        seen_pairs = {tuple(c[i] for i in pair) for c in SEEN}
        assert all(tuple(h[i] for i in pair) in seen_pairs for h in HELD_OUT)
    write_dataset(tmp_path, 40)
    captions = [p.read_text() for sub in ("clips", "images") for p in (tmp_path / sub).glob("*.txt")]
    assert len(captions) == 80 and not {caption(*h) for h in HELD_OUT} & set(captions)
    assert len(list((tmp_path / "controls").glob("*.gif"))) == 40


def test_captions_parse_and_bad_words_are_named():
    assert parse_caption("a blue triangle moving up") == ("blue", "triangle", "up")
    with pytest.raises(ValueError, match="'purple' is not in the toy world"):
        parse_caption("a purple circle moving left")
    with pytest.raises(ValueError, match="not a caption of the toy world"):
        parse_caption("a boat on a lake")


def test_frechet_distance_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64)
    b = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 1
    s_a, s_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    cross = np.sqrt(np.linalg.eigvals(s_a @ s_b).real.clip(0)).sum()  # tr sqrt(S_a S_b), another route
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s_a) + np.trace(s_b) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`python toy/run.py --quick`, shipped to a temporary folder."""
    folder = tmp_path_factory.mktemp("toy")
    code = toy_run.main(["--quick", "--out", str(folder / "run"), "--ship", "--ship-to", str(folder / "weights"),
                         "--device", "cpu"])
    assert code == 0
    return folder


@pytest.mark.slow  # the toy pipeline end to end (--quick): minutes on a 2-core CPU
def test_quick_pipeline_runs_every_stage_and_reports(quick_run):
    results = json.loads((quick_run / "run" / "results.json").read_text())
    stages = set(results["times_s"])
    assert {"data", "vae", "teacher_image", "teacher_motion", "stage1", "stage2", "stage2_plain_init", "direct",
            "i2v", "layout_diffusion", "layout", "classifier", "outline_images", "style_vae", "personalize",
            "style_lora", "stage1_outline", "evaluate"} <= stages
    assert [r["steps"] for r in results["layout_plugged_in"]] == [r["steps"] for r in results["layout"]] == [1, 2, 4]
    methods = {r["method"] for r in results["text_to_video"]}
    assert {"teacher DDIM", "teacher DDIM, trailing", "teacher DPM-Solver++", "teacher DPM-Solver++, trailing",
            "image-only LCM", "AnimateLCM (decoupled)", "direct (VideoLCM-style)"} <= methods
    for row in results["text_to_video"]:
        assert np.isfinite(row["fvd"][0]) and 0 <= row["seen_accuracy"][0] <= 1
    # every training stage logged its prompt following (the toy's validation score) at its last step
    for stage, key in (("teacher_image", "toy_ddim_25"), ("teacher_motion", "toy_ddim_25"), ("stage1", "toy_lcm_4"),
                       ("stage2", "toy_lcm_1"), ("direct", "toy_lcm_4")):
        records = [json.loads(line) for line in (quick_run / "run" / stage / "log.jsonl").read_text().splitlines()]
        health = [r for r in records if key in r]
        assert health and health[-1]["step"] == records[-1]["step"], stage
        video = {"trail", "motion_follows_trail"} if stage not in ("teacher_image", "stage1") else set()
        assert set(health[-1][key]) == {"colour", "shape", "direction", "all", "outline"} | video
        assert all(0 <= v <= 1 for v in health[-1][key].values())
    # a second call finds every stage done and trains nothing
    code = toy_run.main(["--quick", "--out", str(quick_run / "run"), "--skip-eval"])
    assert code == 0 and json.loads((quick_run / "run" / "times.json").read_text()) == results["times_s"]


@pytest.mark.slow  # the toy pipeline end to end (--quick): minutes on a 2-core CPU
def test_from_weights_keeps_a_folders_teachers_and_trains_stage_2_on(quick_run, tmp_path):
    """--from-weights: the shipped VAE, teachers, stage 1, diffusion ControlNet and judge are kept (fp32 copies
    of the fp16 files, their times from the folder's seeds.json); stage 2 and what depends on it train, with the
    --stage2-steps given; a second call continues; a folder with trained stages of its own is refused."""
    from safetensors.torch import load_file
    weights, out = tmp_path / "weights", tmp_path / "again"
    shutil.copytree(quick_run / "weights", weights)
    shipped_times = json.loads((quick_run / "run" / "times.json").read_text())
    (weights / "seeds.json").write_text(json.dumps({"times_s": {"0": shipped_times}}))  # as toy.seeds --ship writes
    flags = ["--quick", "--out", str(out), "--from-weights", str(weights), "--skip-eval", "--stage2-steps", "2"]
    assert toy_run.main(flags) == 0
    for name, source in SHIPPED.items():
        stage = source.split("/")[0]
        assert (out / stage / "DONE").exists(), stage
        kept = stage in KEPT_FROM_WEIGHTS
        assert (out / stage / "log.jsonl").exists() != kept, stage  # kept stages were not trained here
        if kept:
            shipped, copied = load_file(weights / name), load_file(out / source)
            assert shipped.keys() == copied.keys()
            for k, v in copied.items():
                assert v.dtype == (torch.float32 if v.is_floating_point() else shipped[k].dtype)
                torch.testing.assert_close(v, shipped[k].to(v.dtype), rtol=0, atol=0)
    steps = [json.loads(line).get("step", 0) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    times = json.loads((out / "times.json").read_text())
    assert all(times[k] == shipped_times[k] for k in KEPT_FROM_WEIGHTS if k in shipped_times)
    assert {"stage2", "direct", "i2v", "layout"} <= set(times)
    assert toy_run.main(flags) == 0 and json.loads((out / "times.json").read_text()) == times  # nothing retrained
    with pytest.raises(UserError, match="trained stages of its own"):
        (out / "stage1" / "DONE").unlink()
        toy_run.main(flags)
    with pytest.raises(UserError, match="missing toy_sd15"):
        toy_run.main(["--quick", "--out", str(tmp_path / "other"), "--from-weights", str(tmp_path / "nothing")])

@pytest.mark.slow  # the toy pipeline end to end (--quick): minutes on a 2-core CPU
def test_quick_weights_load_and_sample_through_sample_py(quick_run, tmp_path, monkeypatch):
    weights = quick_run / "weights"
    for key, name in (("sd15", "toy_sd15.safetensors"), ("motion", "toy_motion.safetensors"),
                      ("lora", "toy_lcm_lora.safetensors"), ("settings", "toy.json")):
        monkeypatch.setitem(sample.TOY, key, weights / name)
    assert sample.main(["--out", str(tmp_path / "toy.gif"), "--prompt", "a green square moving up"]) == 0
    assert sample.main(["--out", str(tmp_path / "native.gif"), "--prompt", "a green square moving up",
                        "--upscale", "1"]) == 0
    from media.video import read_video
    native, viewable = read_video(tmp_path / "native.gif"), read_video(tmp_path / "toy.gif")
    assert native.shape == (8, 32, 32, 3) and viewable.shape == (8, 256, 256, 3)  # toy output: 8x, nearest
    np.testing.assert_array_equal(viewable[:, ::8, ::8], native)
    assert sample.main(["--out", str(tmp_path / "bad.gif"), "--prompt", "a purple cat"]) == 2


@pytest.mark.slow  # about 3 minutes on a 2-core CPU: keeps the default run under its 5-minute budget
def test_seeds_retrains_the_distillations_and_counts_claims_per_seed(quick_run):
    from safetensors.torch import load_file
    from toy import seeds
    run = quick_run / "run"
    assert seeds.main(["--run", str(run), "--seeds", "1", "--quick", "--device", "cpu"]) == 0
    for stage in seeds.DISTILLATIONS + seeds.STAGE3:
        assert (run / "seeds" / "1" / stage / "DONE").exists(), stage
    teacher = run / "seeds" / "1" / "teacher_image"  # the teacher is the run's, not trained again
    assert teacher.is_symlink() and teacher.resolve() == (run / "teacher_image").resolve()
    seed0, seed1 = (load_file(f / "stage1" / "lora.safetensors") for f in (run, run / "seeds" / "1"))
    assert seed0.keys() == seed1.keys() and any(not torch.equal(seed0[k], seed1[k]) for k in seed0)
    results = json.loads((run / "seeds" / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    ours = [r for r in results["table"] if r["method"] == "AnimateLCM (decoupled)"]
    assert [r["steps"] for r in ours] == list(QUICK.eval_steps) and all(r["seeds"] == 2 for r in ours)
    per_seed = [results["per_seed"][s] for s in ("0", "1")]
    for r in ours:  # the table's cell is the mean of the two seeds' means
        values = [next(x for x in rows if x["method"] == r["method"] and x["steps"] == r["steps"])["fvd"][0]
                  for rows in per_seed]
        assert r["fvd"]["mean"] == pytest.approx(np.mean(values))
    assert results["claims"] and all(len(v) == 2 for v in results["claims"].values())
    assert any(claim.startswith("I2V") for claim in results["claims"])
    assert any("DDIM trailing" in claim for claim in results["claims"])  # the fair baseline's claims
    assert {"teacher DDIM, trailing", "teacher DPM-Solver++, trailing"} <= {r["method"] for r in results["table"]}
    # stage 3: seed 0's rows are the run's own evaluation; seed 1's are measured on its own stage-3 weights.
    # (A continuous reading tells them apart, the I2V first-frame PSNR: at the --quick budget the layout's mask
    # IoU and accuracy can be 0 for both seeds, so the layout is told apart by its weights.)
    run_rows = json.loads((run / "results.json").read_text())
    assert all(results["per_seed_stage3"]["0"][k] == run_rows[k] for k in seeds.STAGE3_ROWS)
    assert results["per_seed_stage3"]["1"]["image_to_video"] != run_rows["image_to_video"]
    layout0, layout1 = (load_file(f / "layout" / "controlnet_lora.safetensors") for f in (run, run / "seeds" / "1"))
    assert layout0.keys() == layout1.keys() and any(not torch.equal(layout0[k], layout1[k]) for k in layout0)
    stage3 = results["stage3_table"]
    assert [r["steps"] for r in stage3] == list(toy_run.STAGE3_STEPS) and all(r["seeds"] == 2 for r in stage3)
    assert stage3[-1]["layout.mask_iou"]["mean"] == pytest.approx(np.mean(
        [results["per_seed_stage3"][s]["layout"][-1]["mask_iou"][0] for s in ("0", "1")]))
    assert "holds in" in (run / "seeds" / "results.txt").read_text()
    # a second call trains and measures nothing: the same results
    assert seeds.main(["--run", str(run), "--seeds", "1", "--quick", "--device", "cpu"]) == 0
    assert json.loads((run / "seeds" / "results.json").read_text()) == results


@pytest.mark.slow  # about 2 minutes on a 2-core CPU
def test_personalize_trains_each_seed_measures_every_method_and_ships(quick_run, tmp_path):
    """toy/personalize.py on the --quick run: seed 1's personalized model on the run's stills and VAE (the
    style LoRA and the upper bound: seed 0's); every method measured on seen prompts; targets counted per
    seed; the recipe recorded; the shipped model marked as the toy's, so that sample.py fills in the rest."""
    from runtime.weights import read_metadata
    from toy import personalize
    run = quick_run / "run"
    assert personalize.main(["--run", str(run), "--seeds", "1", "--quick", "--scales", "0", "1", "--ship",
                             "--ship-to", str(tmp_path)]) == 0
    for stage in personalize.STAGES:
        assert (run / "personalize" / "1" / stage / "DONE").exists(), stage
    assert (run / "personalize" / "1" / "style_vae").resolve() == (run / "style_vae").resolve()
    results = json.loads((tmp_path / "personalized.json").read_text())
    methods = {r["method"] for r in results["table"]}
    assert {"personalized teacher, DDIM", "AnimateLCM on the personalized model", "upper bound: its own stage 1",
            "AnimateLCM on the base model", "AnimateLCM, style LoRA at 0", "AnimateLCM, style LoRA at 1"} <= methods
    assert all(0 <= r[k]["mean"] <= 1 for r in results["table"] for k in ("outline", "colour", "direction", "all"))
    assert len(results["claims"]) == 5 and all(len(v) == 2 for v in results["claims"].values())
    seeds_of = {r["method"]: r["seeds"] for r in results["table"]}  # the sweep and the upper bound: seed 0 only
    assert seeds_of["AnimateLCM on the personalized model"] == 2 and seeds_of["AnimateLCM, style LoRA at 1"] == 1
    assert seeds_of["upper bound: its own stage 1"] == 1 and not (run / "personalize" / "1" / "style_lora").exists()
    assert results["recipe"] == {"run": "fine-tune, lr 0.0003", "steps": 3}
    assert read_metadata(tmp_path / "toy_outline_sd15.safetensors")["toy_world"] == "outline"
    assert sample.is_toy_model(str(tmp_path / "toy_outline_sd15.safetensors"))
    assert not sample.is_toy_model(str(run / "personalize" / "model.safetensors"))


@pytest.mark.slow  # an investigation (toy/studies/): minutes with the rest of them
def test_diagnose_stage3_breaks_down_a_runs_adapters(quick_run):
    """toy/diagnose_stage3.py on the --quick run: PSNR per texture (background and shape apart) and the
    ControlNet's masks against a zero control; its centroid and PSNR helpers checked on known inputs."""
    from toy.studies import diagnose_stage3
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 5:7] = True
    masks[1, 6, 1] = True
    assert diagnose_stage3.centroids(masks).tolist() == [[2.5, 5.5], [6.0, 1.0]]
    from toy.evaluate import psnr
    assert psnr(torch.tensor([0.04, 0.4])).tolist() == pytest.approx([20.0, 10.0])
    report = diagnose_stage3.main(["--run", str(quick_run / "run"), "--count", "4", "--seeds", "1"])
    textures = report["image_to_video"]["textures"]
    assert sum(row["frames"] for row in textures.values()) == 4
    assert all(np.isfinite(v) for row in textures.values() for v in row.values())
    assert set(report["layout"]) == {"real masks", "zero control"}
    assert all(0 <= row["iou"] <= 1 for row in report["layout"].values())
    anchoring = report["anchoring"]
    assert set(anchoring) == {"encoder", "encoder, anchored", "text-to-video, anchored", "real"}
    assert all(np.isfinite(v) for row in anchoring.values() for v in row.values())
    assert all(0 <= row["motion"] <= 1 for name, row in anchoring.items() if name != "real")


@pytest.mark.slow  # an investigation (toy/studies/): minutes with the rest of them
def test_compare_measures_a_run_and_the_real_clip_floor(quick_run, tmp_path):
    from toy.studies import compare
    out = tmp_path / "compare.json"
    assert compare.main(["--run", str(quick_run / "run"), "--steps", "1", "--sets", "2", "--count", "6",
                         "--reference", "16", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {"real clips (floor)", "teacher DDIM, 1 step", "image-only LCM, 1 step",
                         "AnimateLCM (decoupled), 1 step", "AnimateLCM, plain init, 1 step",
                         "direct (VideoLCM-style), 1 step"}
    assert all(len(v) == 2 and all(np.isfinite(v)) and min(v) >= 0 for v in rows.values())
    # real clips are closer to real clips than a 1-step DDIM sample of a barely trained teacher
    assert max(rows["real clips (floor)"]) < min(rows["teacher DDIM, 1 step"])
    # the teacher alone at more steps, at another guidance: one more row; the shared rows are unchanged
    assert compare.main(["--run", str(quick_run / "run"), "--steps", "1", "--teacher-steps", "2", "--guidance", "2",
                         "--sets", "2", "--count", "6", "--reference", "16", "--json", str(out)]) == 0
    more = json.loads(out.read_text())
    assert set(more) == set(rows) | {"teacher DDIM, 2 steps"}
    assert more["image-only LCM, 1 step"] == rows["image-only LCM, 1 step"]
    assert more["teacher DDIM, 1 step"] != rows["teacher DDIM, 1 step"]  # 1-step DDIM with guidance 2, not 4.5


@pytest.mark.slow  # an investigation (toy/studies/): minutes with the rest of them
def test_stage2_sweep_trains_each_variant_and_measures_it(quick_run, tmp_path):
    from toy.studies import sweep_stage2
    out = tmp_path / "sweep.json"
    assert sweep_stage2.main(["--weights", str(quick_run / "weights"), "--out", str(tmp_path / "sweep"),
                              "--steps", "2", "--clips", "8", "--sets", "2", "--count", "4", "--skip-baselines",
                              "--variant", "base=", "--variant", "coarse grid=--original-steps 10", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {f"{v}, {s}" for v in ("base", "coarse grid") for s in ("1 step", "4 steps")}
    assert all(len(v) == 2 and all(np.isfinite(v)) for v in rows.values())
    for folder in ("base", "coarse_grid"):
        assert (tmp_path / "sweep" / folder / "motion_module.safetensors").exists()
    assert rows["base, 4 steps"] != rows["coarse grid, 4 steps"]


@pytest.mark.slow  # an investigation (toy/studies/): minutes with the rest of them
def test_stage2_sweep_measures_one_run_as_it_trains(quick_run, tmp_path):
    from toy.studies import sweep_stage2
    flags = ["--weights", str(quick_run / "weights"), "--out", str(tmp_path / "sweep"), "--clips", "8", "--sets", "1",
             "--count", "4", "--skip-baselines", "--variant", "base="]
    out = tmp_path / "trajectory.json"
    assert sweep_stage2.main([*flags, "--steps", "2", "1", "--json", str(out)]) == 0  # trained in order: 1, then 2
    rows = json.loads(out.read_text())
    assert set(rows) == {f"base ({t} training steps), {s}" for t in (1, 2) for s in ("1 step", "4 steps")}
    assert rows["base (1 training steps), 1 step"] != rows["base (2 training steps), 1 step"]
    log = [json.loads(line) for line in (tmp_path / "sweep" / "base" / "log.jsonl").read_text().splitlines()]
    # one run, continued: not retrained from the start (validation records carry no loss)
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    with pytest.raises(UserError, match="trained past 1 steps"):  # one line and exit code 2 from the command line
        sweep_stage2.main([*flags, "--steps", "1"])


@pytest.mark.slow  # an investigation (toy/studies/): minutes with the rest of them
def test_stage1_sweep_trains_each_variant_and_a_stage2_on_it(quick_run, tmp_path):
    from toy.studies import sweep_stage1
    out = tmp_path / "sweep.json"
    assert sweep_stage1.main(["--weights", str(quick_run / "weights"), "--out", str(tmp_path / "sweep"),
                              "--stage2-steps", "1", "--clips", "8", "--sets", "2", "--count", "4", "--skip-baselines",
                              "--variant", "base=--steps 2 --batch 2",
                              "--variant", "uniform=--steps 2 --batch 2 --loss-weight uniform",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {f"{v}: {m}, {s}" for v in ("base", "uniform") for m in ("image-only LCM", "AnimateLCM")
                         for s in ("1 step", "4 steps")}
    assert all(len(v) == 2 and all(np.isfinite(v)) for v in rows.values())
    for folder in ("base", "uniform"):
        assert (tmp_path / "sweep" / folder / "lora.safetensors").exists()
        assert (tmp_path / "sweep" / f"{folder}_stage2" / "motion_module.safetensors").exists()
    assert rows["base: image-only LCM, 4 steps"] != rows["uniform: image-only LCM, 4 steps"]


def test_a_restored_personalization_keeps_the_loras_merged_on_it():
    """toy/drift.py:restored_model puts parts of a fine-tune back to the base and then merges the LoRAs, so
    that AnimateLCM's acceleration LoRA is in the restored model: with every part restored it is the base
    model with the LoRA, with none the fine-tune with it."""
    from sd15 import load_sd15
    from toy.drift import restored_model, restored_state, unet_state
    weights = ROOT / "toy" / "weights"
    tuned, base_file, lora = (weights / "toy_outline_sd15.safetensors", weights / "toy_sd15.safetensors",
                              [(weights / "toy_lcm_lora.safetensors", 1.0)])
    heavy, base = unet_state(load_sd15(tuned)), unet_state(load_sd15(base_file))
    for where, expected in ((lambda k: True, base_file), (lambda k: False, tuned)):
        made = unet_state(restored_model(tuned, restored_state(heavy, base, where), None, lora))
        want = unet_state(load_sd15(expected, None, lora))
        assert made.keys() == want.keys()
        assert all(torch.allclose(made[k], want[k], atol=1e-6) for k in want)


def test_weight_drift_is_zero_for_the_base_and_grows_with_a_loras_scale():
    """toy/drift.py:weight_drift, the relative distance of a personalization's weights from the base: 0 for a
    LoRA at scale 0, growing in proportion to its scale (the merged delta is linear in it), and per block
    only where the LoRA acts."""
    from toy.constants import TOY_UNET
    from toy.drift import drift_report, weight_drift
    from unet.lora import LoRANetwork
    from unet.model import UNet
    torch.manual_seed(0)
    unet = UNet(TOY_UNET)
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    lora = LoRANetwork.create(unet, 4)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(0, 0.05)  # a trained LoRA: its up weights no longer zero
    drifts = []
    for scale in (0.0, 0.5, 1.0, 2.0):
        lora.set_multiplier(scale)
        lora.merge()
        drifts.append(weight_drift(base, unet.state_dict()))
        lora.unmerge()
    assert drifts[0] == 0 and 0 < drifts[1] < drifts[2] < drifts[3]
    assert abs(drifts[3] / drifts[2] - 2) < 1e-3 and abs(drifts[2] / drifts[1] - 2) < 1e-3
    lora.set_multiplier(1.0)
    lora.merge()
    report = drift_report(base, unet.state_dict())
    assert report["total"] == pytest.approx(drifts[2])
    assert all(report[part] > 0 for part in ("down_blocks.0", "mid_block", "up_blocks.1", "attention layers", "resnets"))
    unet = UNet(TOY_UNET)
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    lora = LoRANetwork.create(unet, 4, targets=("to_q",))  # one kind of layer, inside the attention layers only
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(0, 0.05)
    lora.merge()
    report = drift_report(base, unet.state_dict())
    assert report["resnets"] == 0 < report["attention layers"]


@pytest.mark.slow  # the toy pipeline end to end (--quick): minutes on a 2-core CPU
def test_the_condition_flag_trains_every_video_stage_on_the_degraded_clips(quick_run, tmp_path):
    """toy/run.py --condition webvid --from-weights: the degraded copies of the clips are written, what learnt
    from stills is kept, and every stage that learns from videos trains on the degraded clips."""
    out = tmp_path / "webvid"
    assert toy_run.main(["--quick", "--condition", "webvid", "--from-weights", str(quick_run / "weights"),
                         "--out", str(out), "--skip-eval"]) == 0
    assert len(list((out / "data" / "clips_webvid").glob("*.webp"))) == len(list((out / "data" / "clips").glob("*.gif")))
    from runtime.folder import load_checkpoint
    for stage in toy_run.VIDEO_TRAINED:
        assert (out / stage / "log.jsonl").exists(), stage  # trained here, not kept
        assert load_checkpoint(out / stage / "checkpoint.pt")["settings"]["data"].endswith("clips_webvid"), stage
    for stage in ("teacher_image", "stage1"):  # learnt from stills: kept
        assert not (out / stage / "log.jsonl").exists(), stage
    with pytest.raises(UserError, match="--keep-shipped keeps stages"):
        toy_run.main(["--quick", "--condition", "webvid", "--from-weights", str(quick_run / "weights"),
                      "--keep-shipped", "--out", str(tmp_path / "x")])


@pytest.mark.slow  # a study on the --quick run: minutes on a 2-core CPU
def test_conditions_trains_the_2x2_the_curves_and_the_schedule_study(quick_run, tmp_path):
    """toy/conditions.py on the --quick run, training seeds 0 and 1: both conditions' teachers, stage 2 with
    either initialisation (snapshots at every step), the direct baseline, the schedule study; every row has the
    watermark share; claims counted per seed; the shipped file is what the docs' tables read."""
    from toy import conditions
    run = quick_run / "run"
    assert conditions.main(["--run", str(run), "--quick", "--seeds", "0", "1", "--ship",
                            "--ship-to", str(tmp_path / "conditions.json")]) == 0
    results = json.loads((tmp_path / "conditions.json").read_text())
    cells = {(r["condition"], r["method"], r["steps"]) for r in results["table"]}
    for condition in conditions.CONDITIONS:
        for method in ("real clips", "teacher DDIM", "image-only LCM", "AnimateLCM (decoupled)", "direct (one stage)",
                       "stage 2, AnimateLCM init, at step 1", "stage 2, plain init, at step 3"):
            assert any(c[:2] == (condition, method) for c in cells), (condition, method)
    assert ("clean", "AnimateLCM, stage 1 under sqrt_beta_linear", 4) in cells
    assert {r["method"] for r in results["schedule"]} == set(conditions.SCHEDULE_ROWS)  # seed 0's own rows
    assert all(0 <= r["watermark"]["mean"] <= 1 for r in results["table"])
    assert all(len(held) == 2 for held in results["claims"].values())
    assert any(c.startswith("webvid: decoupled draws the watermark") for c in results["claims"])
    assert not any(c.startswith("clean: decoupled draws the watermark") for c in results["claims"])
    webvid_1 = run / "conditions" / "webvid" / "1"
    assert (webvid_1 / "stage1").resolve() == (run / "conditions" / "clean" / "1" / "stage1").resolve()
    assert (webvid_1 / "teacher_motion").resolve() == (run / "conditions" / "webvid" / "0" / "teacher_motion").resolve()


@pytest.mark.slow  # a study on the --quick run: minutes on a 2-core CPU
def test_drift_sweep_trains_every_personalization_and_measures_it(quick_run):
    """toy/drift.py --quick --restore on the --quick run: every fine-tune rate and LoRA rank, kept at its
    snapshots, measured (drift, the personalized teacher, AnimateLCM on it); the heaviest with parts restored."""
    from toy import drift
    run = quick_run / "run"
    assert drift.main(["--run", str(run), "--quick", "--restore"]) == 0
    results = json.loads((run / "drift" / "results.json").read_text())
    runs = {r["run"] for r in results["rows"]}
    assert runs == {"base model", *drift.sweep_runs(QUICK)}
    assert results["rows"][0]["drift"]["total"] == 0 and all(r["drift"]["total"] > 0 for r in results["rows"][1:])
    assert {r["restored"] for r in results["restored"]} == set(drift.RESTORED)
    times = results["times_s"]  # each training run's seconds and the measurement's, for docs/toy-world.md section 7
    assert set(times) == {*map(drift.stage_name, drift.sweep_runs(QUICK)), "measurement"}
    assert all(t > 0 for t in times.values())
    for row in results["rows"]:
        assert {"teacher", "animatelcm", "drift"} <= set(row)
        assert all(0 <= row[who]["outline"][0] <= 1 for who in ("teacher", "animatelcm"))


@pytest.mark.slow  # an investigation (toy/studies/) on the --quick run
def test_step_time_times_each_stage_at_each_batch(quick_run, capsys, tmp_path):
    from toy.studies import step_time
    shipped = tmp_path / "step_time.json"
    assert step_time.main(["--run", str(quick_run / "run"), "--quick", "--batches", "2", "4",
                           "--stages", "image", "direct", "--ship", "--ship-to", str(shipped)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "a step" in line]
    assert len(lines) == 4 and all(float(line.split()[3]) > 0 for line in lines)
    rows = json.loads(shipped.read_text())["rows"]  # what the docs' step-time table is drawn from
    assert [(r["stage"], r["batch"]) for r in rows] == [("image", 2), ("image", 4), ("direct", 2), ("direct", 4)]
    assert [r["seconds"] for r in rows] == pytest.approx([float(line.split()[3]) for line in lines], abs=0.0051)
