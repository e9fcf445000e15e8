"""The three training stages on tiny random models: they learn, train only what they should, save
files that our loaders and diffusers' read, resume exactly, survive SIGTERM, skip corrupt data, and
give the same weights on two processes as on one."""
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
from lcm.distill import distillation_loss, solver_pair, teacher_ddim_point
from lcm.schedule import NoiseSchedule
from runtime.cli import UserError
from runtime.distributed import sample_generators
from runtime.draws import integers, normal
from runtime.weights import read_metadata, read_state_dict
from sd15 import load_sd15
from tiny import write_clips, write_training_files
from unet.lora import LoRANetwork

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--size", "32", "--workers", "0", "--val-every", "0", "--log-every", "1", "--warmup-steps", "1",
         "--device", "cpu"]
VIDEO = ["--frames", "4", "--stride", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    write_training_files(d)
    write_clips(d, 3, 6, 32)
    return d


def image_args(d, out, *extra):
    return ["--sd15", str(d / "sd15.safetensors"), "--data", str(d / "images"), "--out", str(out), *SMALL,
            "--batch", "1", *extra]  # a later --batch in `extra` wins


def video_args(d, out, *extra):
    return ["--sd15", str(d / "sd15.safetensors"), "--teacher-motion", str(d / "motion.safetensors"),
            "--lora", str(d / "lora.safetensors"), "--data", str(d / "clips"), "--out", str(out),
            *SMALL, *VIDEO, *extra]


def adapter_args(d, out, *extra):
    return ["--sd15", str(d / "sd15.safetensors"), "--motion", str(d / "motion.safetensors"),
            "--data", str(d / "clips"), "--out", str(out), *SMALL, *VIDEO, *extra]


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def fixed_draw_loss(model, online, target, teacher, x0, captions, schedule, w=2.0, draws=6, seed=123):
    """Mean distillation loss on one batch over fixed random draws: comparable before and after training."""
    context = model.encode_prompts(captions)
    uncontext = model.encode_prompts([""] * len(captions))
    total = 0.0
    with torch.no_grad():
        for k in range(draws):
            gens = sample_generators(seed, k, 0, x0.shape[0])
            t_start, t_end = solver_pair(integers(gens, 50), 50)
            point = teacher_ddim_point(teacher, uncontext, torch.full((x0.shape[0],), w))
            loss = distillation_loss(online=online, target=target, target_point=point, schedule=schedule, x0=x0,
                                     noise=normal(gens, x0.shape[1:]), t_start=t_start, t_end=t_end,
                                     context=context, original_steps=50, loss="huber")
            total += loss.mean().item() / draws
    return total


def image_batch(d, model, video=False):
    from media.data import ImageCaptionDataset, VideoCaptionDataset, collate
    dataset = VideoCaptionDataset(d / "clips", frames=4, stride=1, size=32) if video else \
        ImageCaptionDataset(d / "images", size=32)
    batch = collate([dataset[i] for i in range(len(dataset))])
    return model.encode_latents(batch["pixels"], sample_generators(0, 0, 0, len(dataset))), batch["captions"]


def test_stage1_lora_learns_saves_in_kohya_format_and_leaves_the_base_alone(world, tmp_path):
    out = tmp_path / "s1"
    result = train_image.main(image_args(world, out, "--steps", "30", "--lr", "3e-3", "--lora-rank", "8",
                                         "--batch", "3", "--w-min", "2", "--w-max", "2"))
    base = load_sd15(world / "sd15.safetensors")
    for (name, p), q in zip(result["unet"].state_dict().items(), base.unet.state_dict().values()):
        assert torch.equal(p, q), f"frozen {name} changed"
    records = log_records(out)
    assert [r["step"] for r in records] == list(range(1, 31)) and all(r["loss"] > 0 for r in records)
    assert any(k.startswith("loss_t") for k in records[-1])
    # the trained LoRA lowers the consistency loss on the training images (fixed draws, before vs after)
    x0, captions = image_batch(world, base)
    trained = load_sd15(world / "sd15.safetensors")
    lora = LoRANetwork.load(trained.unet, out / "lora.safetensors")
    schedule = NoiseSchedule("beta_linear")  # train_image's default: the video model's schedule
    before = fixed_draw_loss(base, base.unet, base.unet, base.unet, x0, captions, schedule)
    after = fixed_draw_loss(trained, trained.unet, trained.unet, base.unet, x0, captions, schedule)
    assert after < 0.9 * before, (before, after)  # measured: 0.0228 -> 0.0182
    assert lora.children().__next__().rank == 8
    meta = read_metadata(out / "lora.safetensors")
    assert json.loads(meta["schedule"])["kind"] == "beta_linear" and json.loads(meta["settings"])["steps"] == 30
    # diffusers reads the same file and fuses it into the same function
    from test_lora import fuse_into_reference
    from test_unet import assert_close
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from tiny import TINY_UNET
    sd_file = read_state_dict(world / "sd15.safetensors")
    ref = UNet2DConditionModel(**TINY_UNET)
    ref.load_state_dict(convert_ldm_unet_checkpoint(sd_file, ref.config))
    ref = fuse_into_reference(ref.eval(), out / "lora.safetensors", 1.0)
    lora.merge()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert_close(trained.unet(x, t, c), ref(x, t, c).sample)


def test_stage2_trains_only_the_motion_modules_and_saves_an_animatelcm_file(world, tmp_path):
    out = tmp_path / "s2"
    (world / "clips" / "broken.mp4").write_bytes(b"not a video at all")  # a corrupt clip: skipped
    (world / "clips" / "broken.txt").write_text("a broken clip")
    try:
        result = train_video.main(video_args(world, out, "--steps", "6", "--lr", "1e-3", "--batch", "2"))
    finally:
        (world / "clips" / "broken.mp4").unlink()
        (world / "clips" / "broken.txt").unlink()
    teacher = load_sd15(world / "sd15.safetensors", world / "motion.safetensors", [(world / "lora.safetensors", 1.0)])
    online = result["online"].state_dict()
    changed = {k for k, v in teacher.unet.state_dict().items() if not torch.equal(v, online[k])}
    assert changed and all("motion_modules." in k for k in changed)  # spatial weights bit-identical
    assert len(changed) > 0.5 * sum("motion_modules." in k for k in online)
    for k, v in load_sd15(world / "sd15.safetensors", world / "motion.safetensors").unet.state_dict().items():
        assert torch.equal(v, result["teacher"].unet.state_dict()[k])  # the teacher never moves
    # the exported motion module is the EMA target's; it loads back through our loader ...
    saved = load_sd15(world / "sd15.safetensors", out / "motion_module.safetensors")
    target = result["target"].state_dict()
    for k, v in saved.unet.state_dict().items():
        if "motion_modules." in k:
            assert torch.equal(v, target[k])
    # ... and through diffusers' AnimateDiff converter (strict, every key used)
    from test_unet import assert_close, reference_video_unet, run_reference
    ref = reference_video_unet(read_state_dict(world / "sd15.safetensors"), read_state_dict(out / "motion_module.safetensors"))
    x, t, c = torch.randn(1, 4, 4, 8, 8), torch.tensor([300]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert_close(saved.unet(x, t, c), run_reference(ref, x, t, c))
    meta = read_metadata(out / "motion_module.safetensors")
    assert json.loads(meta["schedule"])["kind"] == "beta_linear"
    # AnimateLCM's layout (the teacher's file is AnimateDiff v2's, with position tables): none stored
    assert read_metadata(world / "motion.safetensors")["layout"] == "animatediff_v2"
    assert meta["layout"] == "animatelcm_t2v"
    assert not any("pos_encoder" in k for k in read_state_dict(out / "motion_module.safetensors"))


def test_stage2_target_init_follows_animatelcm(world, tmp_path):
    """The EMA target starts without the LoRA and moves all its weights toward base + LoRA."""
    lora_file = tmp_path / "lora.safetensors"
    from test_lora import random_kohya_lora
    base = load_sd15(world / "sd15.safetensors", world / "motion.safetensors")
    from runtime.weights import save_safetensors
    save_safetensors(random_kohya_lora(base.unet, rank=4, alpha=4.0), lora_file)
    args = video_args(world, tmp_path / "s2", "--steps", "1", "--lora", str(lora_file), "--ema-decay", "0.5")
    result = train_video.main(args)
    merged = load_sd15(world / "sd15.safetensors", world / "motion.safetensors", [(lora_file, 1.0)])
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    w0, w1 = base.unet.state_dict()[key], merged.unet.state_dict()[key]
    torch.testing.assert_close(result["target"].state_dict()[key], 0.5 * w0 + 0.5 * w1)
    plain = train_video.main(args + ["--init", "plain", "--out", str(tmp_path / "plain")])
    torch.testing.assert_close(plain["target"].state_dict()[key], w1)


def test_stage3_image_encoder_trains_from_scratch_and_exports_the_i2v_layout(world, tmp_path):
    out = tmp_path / "s3"
    result = train_adapter.main(adapter_args(world, out, "--steps", "4", "--lr", "1e-3", "--val-every", "4"))
    video = load_sd15(world / "sd15.safetensors", world / "motion.safetensors")
    unet = result["unet"].state_dict()
    for k, v in video.unet.state_dict().items():
        assert torch.equal(v, unet[k]), f"frozen {k} changed"
    assert any(p.abs().sum() > 0 for p in result["online"].parameters())  # it left zero-init
    i2v = load_sd15(world / "sd15.safetensors", out / "i2v_motion_module.safetensors")
    assert i2v.unet.img_encoder is not None
    assert read_metadata(out / "i2v_motion_module.safetensors")["layout"] == "animatelcm_i2v"
    for k, v in i2v.unet.img_encoder.state_dict().items():
        assert torch.equal(v, result["target"].state_dict()[k])
    assert sorted(p.name for p in (out / "val").iterdir()) == [f"step000004_{n}steps.gif" for n in (1, 2, 4)]


def test_stage3_controlnet_new_then_adapted_with_lora(world, tmp_path):
    """A new ControlNet (a copy of the UNet's encoder) trains whole; an existing one trains only a LoRA."""
    control = ["--adapter", "controlnet", "--control-data", str(world / "controls"), "--lr", "1e-3"]
    new = train_adapter.main(adapter_args(world, tmp_path / "new", *control, "--steps", "3"))
    video = load_sd15(world / "sd15.safetensors", world / "motion.safetensors")
    for k, v in video.unet.state_dict().items():
        assert torch.equal(v, new["unet"].state_dict()[k]), f"frozen {k} changed"
    zero_conv = new["online"].controlnet_down_blocks[0].weight
    assert zero_conv.abs().sum() > 0  # it learnt to pass control through (zero-initialised)
    from unet.controlnet import load_controlnet
    saved = load_controlnet(tmp_path / "new" / "controlnet.safetensors")  # ControlNet-1.1 layout, hints
    for k, v in saved.state_dict().items():
        assert torch.equal(v, new["target"].state_dict()[k])

    adapted = train_adapter.main(adapter_args(world, tmp_path / "lora", *control, "--steps", "3", "--lora-rank", "4",
                                              "--controlnet", str(tmp_path / "new" / "controlnet.safetensors"),
                                              "--val-every", "3"))
    for k, v in saved.state_dict().items():  # the given ControlNet stays; only its LoRA trains
        assert torch.equal(v, adapted["online"].state_dict()[k]), k
    lora = read_state_dict(tmp_path / "lora" / "controlnet_lora.safetensors")
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_up" in k)
    # load_controlnet(lora=) (what sample.py and toy/run.py use) is the ControlNet with its LoRA merged
    with_lora = load_controlnet(tmp_path / "new" / "controlnet.safetensors",
                                lora=tmp_path / "lora" / "controlnet_lora.safetensors")
    LoRANetwork.load(saved, tmp_path / "lora" / "controlnet_lora.safetensors").merge()
    changed = [k for k, v in saved.state_dict().items() if not torch.equal(v, new["target"].state_dict()[k])]
    assert changed and all(torch.equal(v, saved.state_dict()[k]) for k, v in with_lora.state_dict().items())
    assert len(list((tmp_path / "lora" / "val").iterdir())) == 3
    with pytest.raises(UserError, match="--control-data"):
        train_adapter.main(adapter_args(world, tmp_path / "x", "--adapter", "controlnet"))


def test_teacher_controlnet_learns_the_denoising_loss_for_the_diffusion_model(world, tmp_path, monkeypatch):
    """train_teacher.py --train controlnet: a new ControlNet learns the DDPM loss on the frozen video model (no
    consistency target is ever built), validates with DDIM, and loads like any ControlNet."""
    calls = []
    real_denoising_loss = train_teacher.denoising_loss

    def denoising_loss(*args, **kwargs):
        calls.append(args[2].shape)  # x0 of the micro-batch
        return real_denoising_loss(*args, **kwargs)
    monkeypatch.setattr(train_teacher, "denoising_loss", denoising_loss)
    control = ["--train", "controlnet", "--control-data", str(world / "controls"), "--lr", "1e-3"]
    result = train_teacher.main(adapter_args(world, tmp_path / "ddpm", *control, "--steps", "3", "--val-every", "3"))
    assert len(calls) == 3 and calls[0][2] == 4  # one loss per step, on video latents of 4 frames
    video = load_sd15(world / "sd15.safetensors", world / "motion.safetensors")
    for k, v in video.unet.state_dict().items():
        assert torch.equal(v, result["model"].unet.state_dict()[k]), f"frozen {k} changed"
    assert result["online"].controlnet_down_blocks[0].weight.abs().sum() > 0
    from unet.controlnet import load_controlnet
    load_controlnet(tmp_path / "ddpm" / "controlnet.safetensors")
    assert sorted(p.name for p in (tmp_path / "ddpm" / "val").iterdir()) == ["step000003_25steps.gif",
                                                                           "step000003_4steps.gif"]
    with pytest.raises(UserError, match="--train must be unet or lora or motion or controlnet"):
        train_teacher.main(adapter_args(world, tmp_path / "x", *control[2:], "--train", "ddpm"))
    with pytest.raises(UserError, match="--train controlnet needs --motion"):
        train_teacher.main(adapter_args(world, tmp_path / "x", *control[2:], "--train", "controlnet", "--motion", ""))


def test_resume_continues_exactly(world, tmp_path):
    anneal = ["--lr-anneal-at", "3"]  # the schedule goes on where it stopped
    straight = train_video.main(video_args(world, tmp_path / "a", "--steps", "4", "--lr", "1e-3", *anneal))
    train_video.main(video_args(world, tmp_path / "b", "--steps", "2", "--lr", "1e-3", *anneal))
    resumed = train_video.main(video_args(world, tmp_path / "b", "--steps", "4", "--lr", "1e-3", *anneal,
                                          "--resume", "true"))
    for k, v in straight["target"].state_dict().items():
        assert torch.equal(v, resumed["target"].state_dict()[k]), k
    a, b = log_records(tmp_path / "a"), log_records(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in b] == [1e-3, 1e-3, 1e-3, 2e-4]


def test_direct_trains_a_new_lora_beside_the_motion_modules_exports_its_ema_and_resumes_exactly(world, tmp_path):
    """--direct (the one-stage baseline): a fresh spatial LoRA trains with the motion modules, its EMA copy
    follows it a step behind and is what lora.safetensors holds; a resumed run ends where a straight one does."""
    direct = ["--direct", "true", "--lora", "", "--lora-rank", "4", "--lr", "1e-3", "--ema-decay", "0.5"]
    straight = train_video.main(video_args(world, tmp_path / "a", "--steps", "3", *direct))
    online = straight["lora"].state_dict()
    exported = read_state_dict(tmp_path / "a" / "lora.safetensors")
    assert set(exported) == set(online)
    ups = [k for k in online if "lora_up" in k]
    assert ups and all(online[k].abs().sum() > 0 for k in ups)  # the LoRA trained (its up weights start at 0)
    assert all(exported[k].abs().sum() > 0 for k in ups)  # the EMA copy followed it ...
    assert any(not torch.equal(exported[k], online[k].to(exported[k].dtype)) for k in ups)  # ... with its lag
    train_video.main(video_args(world, tmp_path / "b", "--steps", "1", *direct))
    resumed = train_video.main(video_args(world, tmp_path / "b", "--steps", "3", *direct, "--resume", "true"))
    for k, v in straight["target"].state_dict().items():
        assert torch.equal(v, resumed["target"].state_dict()[k]), k
    again = read_state_dict(tmp_path / "b" / "lora.safetensors")
    assert all(torch.equal(exported[k], again[k]) for k in exported)


def test_stage1_loss_weight_scales_the_first_loss_by_the_drawn_timesteps_sqrt_snr(world, tmp_path):
    """--loss-weight sqrt_snr: the same first draw (same seed), its loss times alpha_t / sigma_t at t_{n+k}."""
    from lcm.distill import ddim_grid, loss_weight
    losses = {}
    for kind in ("uniform", "sqrt_snr"):
        train_image.main(image_args(world, tmp_path / kind, "--steps", "1", "--lora-rank", "4",
                                    "--loss-weight", kind))
        losses[kind] = log_records(tmp_path / kind)[0]["loss"]
    weights = loss_weight(NoiseSchedule("beta_linear"), ddim_grid(50, 1000), "sqrt_snr")  # train_image's schedule
    ratio = losses["sqrt_snr"] / losses["uniform"]
    assert min(abs(ratio / weights - 1)) < 1e-4 and abs(ratio - 1) > 1e-3, (ratio, weights)
    with pytest.raises(UserError, match="--loss-weight must be uniform or sqrt_snr"):
        train_image.main(image_args(world, tmp_path / "bad", "--loss-weight", "snr"))


def test_sigterm_leaves_a_checkpoint_that_resumes_to_the_same_weights(world, tmp_path):
    steps = "30"
    # the same thread count as this process, whatever OMP_NUM_THREADS says: the same float sums
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = image_args(world, tmp_path / "killed", "--steps", steps, "--lora-rank", "4", "--save-every", "1000",
                      "--batch", "1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_image.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output  # 128 + SIGTERM, as shells expect
    stopped = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= stopped < 30 and f"stopped by SIGTERM at step {stopped} of 30" in output
    assert "continue with the same command and --resume true" in output
    train_image.main(args + ["--resume", "true"])
    train_image.main(image_args(world, tmp_path / "straight", "--steps", steps, "--lora-rank", "4", "--batch", "1"))
    killed, straight = (read_state_dict(tmp_path / n / "lora.safetensors") for n in ("killed", "straight"))
    for k in straight:
        assert torch.equal(killed[k], straight[k]), k


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(world, tmp_path):
    out = tmp_path / "nan"
    train_image.main(image_args(world, out, "--steps", "1", "--lora-rank", "4"))
    before = (out / "checkpoint.pt").read_bytes()
    state = read_state_dict(world / "sd15.safetensors")
    key = next(k for k in state if k.endswith("out.2.weight") and "diffusion_model" in k)
    state[key] = torch.full_like(state[key], float("nan"))
    from safetensors.torch import save_file  # (our save_safetensors refuses NaN)
    save_file(state, tmp_path / "nan.safetensors", read_metadata(world / "sd15.safetensors"))
    args = image_args(world, out, "--steps", "3", "--lora-rank", "4", "--resume", "true")
    args[1] = str(tmp_path / "nan.safetensors")
    with pytest.raises(UserError, match=r"non-finite loss at step 2: .*checkpoint.pt holds step 1 \(finite") as e:
        train_image.main(args)
    assert "--precision" not in str(e.value)  # autocast runs on GPU only: no use on this CPU run
    assert (out / "checkpoint.pt").read_bytes() == before


def test_two_processes_match_one_process_on_the_combined_batch(world, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), batch 1 each == one process, batch 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = image_args(world, tmp_path / "ddp", "--steps", "3", "--lora-rank", "4", "--batch", "1", "--lr", "1e-3")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", str(ROOT / "train_image.py"), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    train_image.main(image_args(world, tmp_path / "one", "--steps", "3", "--lora-rank", "4", "--batch", "2",
                                "--lr", "1e-3"))
    ddp, one = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["online"] for n in ("ddp", "one"))
    # the same numbers up to the order of float sums: per-step loss and gradient norm ...
    for a, b in zip(log_records(tmp_path / "ddp"), log_records(tmp_path / "one")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # ... and weights, normwise (Adam turns float noise in near-zero gradients into +-lr steps on single
    # elements, so an elementwise bound would be meaningless); up weights start at zero: their norm is
    # what training moved
    moved = sum(v.square().sum() for k, v in one.items() if "lora_up" in k).sqrt()
    error = sum((ddp[k] - one[k]).square().sum() for k in one).sqrt()
    assert moved > 1e-2 and error < 0.05 * moved, (moved, error)
    assert [r["step"] for r in log_records(tmp_path / "ddp")] == [1, 2, 3]  # rank 0 alone writes


def test_teacher_script_trains_the_image_model_and_new_motion_modules(world, tmp_path):
    """train_teacher.py --train unet trains the whole UNet and writes an SD1.5 file; --train motion trains new
    motion modules on it (AnimateDiff's recipe) and writes an AnimateDiff file."""
    image = train_teacher.main(image_args(world, tmp_path / "t2i", "--train", "unet", "--steps", "3",
                                          "--lr", "1e-3", "--ema-decay", "0.5", "--val-every", "3",
                                          "--lr-anneal-at", "2", "--lr-anneal-factor", "0.5"))
    assert [r["lr"] for r in log_records(tmp_path / "t2i") if "lr" in r] == [1e-3, 1e-3, 5e-4]  # annealed at step 2
    start = load_sd15(world / "sd15.safetensors")
    trained = load_sd15(tmp_path / "t2i" / "model.safetensors")  # the EMA weights, loadable as --sd15
    key = "down_blocks.0.resnets.0.conv1.weight"
    w0, w_online = start.unet.state_dict()[key], image["online"].state_dict()[key]
    assert not torch.equal(w0, w_online)
    torch.testing.assert_close(trained.unet.state_dict()[key], image["target"].state_dict()[key])
    assert sorted(p.name for p in (tmp_path / "t2i" / "val").iterdir()) == ["step000003_25steps.png",
                                                                            "step000003_4steps.png"]
    video_args_ = ["--train", "motion", "--sd15", str(tmp_path / "t2i" / "model.safetensors"), "--data",
                   str(world / "clips"), "--out", str(tmp_path / "motion"), "--steps", "3", "--lr", "1e-3",
                   "--ema-decay", "0", *SMALL, *VIDEO]
    motion = train_teacher.main(video_args_)
    changed = {k for k, v in motion["online"].state_dict().items() if not torch.equal(v, trained.unet.state_dict().get(k, v))}
    assert not changed  # spatial weights untouched (new motion modules are not in the image model)
    proj_out = [v for k, v in motion["online"].state_dict().items() if k.endswith("temporal_transformer.proj_out.weight")]
    assert proj_out and all(v.abs().sum() > 0 for v in proj_out)  # the zero-initialised outputs moved
    video = load_sd15(tmp_path / "t2i" / "model.safetensors", tmp_path / "motion" / "motion_module.safetensors")
    assert video.unet.cfg.motion_mid_block
    # written as AnimateDiff v2 writes it, a 32-long position table per temporal attention, so that other tools
    # take it for the AnimateDiff model it is (test_exports.py: the same at SD1.5 size)
    written = read_state_dict(tmp_path / "motion" / "motion_module.safetensors")
    assert read_metadata(tmp_path / "motion" / "motion_module.safetensors")["layout"] == "animatediff_v2"
    assert {tuple(v.shape[:2]) for k, v in written.items() if k.endswith(".pos_encoder.pe")} == {(1, 32)}
    with pytest.raises(UserError, match="--loss-weight must be uniform or sqrt_v or v "):  # a teacher's weights
        train_teacher.main(video_args_ + ["--loss-weight", "sqrt_snr"])
    with pytest.raises(UserError, match="--loss-weight must be uniform or sqrt_snr"):  # a distillation's
        train_video.main(video_args(world, tmp_path / "x", "--loss-weight", "v"))
    with pytest.raises(UserError, match="--teacher-motion"):
        train_video.main(video_args(world, tmp_path / "x", "--teacher-motion", ""))


def test_validation_scores_with_the_schedule_the_run_trains_with(world, tmp_path):
    """A `score` given to a training script is called at each validation with the target model and the run's
    own noise schedule (each of the two, for stage 1 and stage 2), never a fixed one."""
    seen = []

    def score(model, schedule):
        seen.append((schedule, model.unet))
        return {"toy": 1.0}
    for kind in ("sqrt_beta_linear", "beta_linear"):
        out = tmp_path / kind
        result = train_image.main(image_args(world, out, "--steps", "2", "--val-every", "1", "--lora-rank", "4",
                                             "--beta-schedule", kind), score=score)
        assert [s.kind for s, _ in seen[-2:]] == [kind, kind]
        assert all(unet is result["target"] for _, unet in seen[-2:])
        assert [r["step"] for r in log_records(out) if "toy" in r] == [1, 2]
    video = train_video.main(video_args(world, tmp_path / "v", "--steps", "1", "--val-every", "1",
                                        "--beta-schedule", "sqrt_beta_linear"), score=score)
    assert seen[-1][0].kind == "sqrt_beta_linear" and seen[-1][1] is video["target"]
