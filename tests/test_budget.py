"""benchmarks/budget.py: the memory and FLOPs of a training step, counted on fake tensors.

The count on fake tensors equals the same counter on real CPU tensors; weights, gradients and AdamW's
state equal the bytes the models' shapes and dtypes give; activations grow with frames and pixels; the
CPU follows CUDA's autocast dtypes; each script's loop and the budget's copy of it call the same
functions in the same order; the docs' table is the results file's. At SD1.5 size (slow): the counts
against the H100's measured peaks (docs/equivalence.md).
"""
import ast
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import budget, budget_stages, budget_table
from benchmarks.memory import cuda_fp32_ops
from unet.model import UNet

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def count(*flags, fake=True):
    stage, size, _, s = budget.parse(["--model", "tiny", *flags])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the real run's bf16 kernels on tiny tensors: a second thread only waits
    try:
        return budget.count(stage, s, size, fake)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def video():
    """Stage 2 on tiny models, 2 frames of 64x64, the GPU's rules (bf16, frozen weights in bf16)."""
    return count("--stage", "video", "--frames", "2", "--size", "64")


@pytest.mark.parametrize("flags", [["--stage", "teacher", "--train", "motion", "--frames", "2"],
                                   ["--stage", "image", "--batch", "2"]])
def test_budget_command_prints_the_peak_by_role_and_the_flops(flags, capsys):
    budget.main(["--model", "tiny", "--size", "64", *flags])
    out = capsys.readouterr().out
    assert "peak while the models are built" in out and "peak of a training step" in out
    for role in budget_stages.ROLES:
        assert f"    {role}" in out
    assert float(out.split("trained parameters; ")[1].split(" TFLOP")[0]) > 0


def test_budget_command_refuses_what_it_cannot_count_in_one_line(capsys):
    from runtime import cli
    assert cli.run(budget.main, ["--stage", "video", "--fake", "false"]) == 2
    assert cli.run(budget.main, ["--stage", "video", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "use it with --model tiny or small" in err and "--device 'gpu'" in err


def test_weights_gradients_and_optimizer_state_are_the_bytes_of_the_parameters(video):
    """Stage 2: the teacher and the online model's frozen part in bf16, the motion modules and the EMA target
    in fp32, the VAE and text encoder in fp32; AdamW: two fp32 moments and a 4-byte step per tensor."""
    cfg, vae_cfg, text_cfg = budget_stages.SIZES["tiny"]
    with torch.device("meta"):
        unet = UNet(cfg.with_motion(budget_stages.TEACHER_MOTION))
        vae, text = budget_stages.AutoencoderKL(vae_cfg), budget_stages.CLIPTextEncoder(text_cfg)
    motion = [p for n, p in unet.named_parameters() if "motion_modules." in n]
    n_unet, n_motion = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in motion)
    others = sum(t.numel() * t.element_size() for m in (vae, text) for t in [*m.parameters(), *m.buffers()])
    assert not list(unet.buffers())
    at = video["after_backward"]
    assert video["frozen_low"] and video["trained_parameters"] == n_motion
    assert at["trained weights"] == 4 * n_motion
    assert at["other weights"] == 2 * n_unet + 2 * (n_unet - n_motion) + 4 * n_unet + others
    assert at["gradients"] == 4 * n_motion
    assert at["optimizer state"] == 2 * 4 * n_motion + 4 * len(motion)


def test_activations_grow_with_frames_and_with_pixels(video):
    frames = count("--stage", "video", "--frames", "4", "--size", "64")
    pixels = count("--stage", "video", "--frames", "2", "--size", "128")
    base = video["at_peak"]["activations"]
    assert 1.9 < frames["at_peak"]["activations"] / base < 2.1  # linear in frames
    assert 3.8 < pixels["at_peak"]["activations"] / base < 4.2  # linear in pixels (latents 8x8 -> 16x16)
    assert frames["at_peak"]["other weights"] == video["at_peak"]["other weights"] == pixels["at_peak"]["other weights"]
    assert 1.9 < frames["flops"] / video["flops"] < 2.1 and pixels["flops"] > 3.9 * video["flops"]


@pytest.mark.parametrize("flags, gpu", [(["--stage", "video", "--frames", "2", "--size", "32"], True),
                                        (["--stage", "adapter", "--adapter", "controlnet", "--controlnet", "x.pth",
                                          "--frames", "2", "--size", "32", "--device", "cpu"], False)])
def test_fake_tensors_count_what_real_tensors_hold(flags, gpu):
    """The same step on real CPU tensors and on fake ones: the same peak, split alike, and the same FLOPs
    (the GPU's rules: bf16 autocast with CUDA's fp32 ops; the CPU's: fp32)."""
    fake, real = count(*flags), count(*flags, fake=False)
    assert fake["gpu"] == fake["frozen_low"] == gpu
    assert fake["peak"] == real["peak"] and fake["at_peak"] == real["at_peak"]
    assert fake["after_backward"] == real["after_backward"] and fake["flops"] == real["flops"] > 0
    assert fake["peak_phase"] == real["peak_phase"]


def test_the_cpu_keeps_cuda_autocast_fp32_ops_in_fp32_only_while_asked():
    x = torch.randn(2, 8, 4, 4)
    norm, weight = torch.nn.GroupNorm(4, 8), torch.randn(8, 8, 1, 1)
    with cuda_fp32_ops(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv = F.conv2d(x, weight)
        dtypes = [conv.dtype, norm(conv).dtype, F.layer_norm(conv, (4,)).dtype,
                  F.interpolate(conv, scale_factor=2.0).dtype]
    assert dtypes == [torch.bfloat16, torch.float32, torch.float32, torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast's own rule again
        assert norm(F.conv2d(x, weight)).dtype == torch.bfloat16


# ---- the budget runs each script's loop as the script has it --------------------------------------
LOOP_CALLS = {"encode_latents", "encode_prompts", "uniform", "integers", "normal", "coin_flips", "drop_captions",
              "solver_pair", "autocast", "distillation_loss", "denoising_loss", "teacher_ddim_point", "steered",
              "denoiser", "backward", "clip_gradients", "clip_grad_norm_", "step", "zero_grad", "ema_update"}


def calls(nodes) -> list[str]:
    """The names of LOOP_CALLS called in `nodes`, in the order of the source (clip_grad_norm_ is what
    clip_gradients does on one process)."""
    found = []
    for node in nodes:
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                name = getattr(call.func, "attr", getattr(call.func, "id", ""))
                if name in LOOP_CALLS:
                    found.append((call.lineno, call.col_offset, name.replace("clip_grad_norm_", "clip_gradients")))
    return [name for *_, name in sorted(found)]


def script_loop(module) -> list[str]:
    main = next(n for n in ast.parse(inspect.getsource(module)).body if getattr(n, "name", "") == "main")
    loop = next(n for n in ast.walk(main) if isinstance(n, ast.While))
    return calls(loop.body)


def budget_loop(stage: str) -> list[str]:
    function = ast.parse(inspect.getsource(budget_stages.STAGES[stage])).body[0]
    inner = {n.name: n for n in ast.walk(function) if isinstance(n, ast.FunctionDef)}
    counted = ast.parse(inspect.getsource(budget.count)).body[0]
    step = next(n for n in ast.walk(counted) if isinstance(n, ast.With) and "FlopCount" in ast.unparse(n.items[0]))
    driver = [name for name in calls(step.body) if name in ("clip_gradients", "step", "zero_grad")]
    return calls(inner["micro_step"].body) + driver + calls(inner["after_step"].body)


@pytest.mark.parametrize("stage", sorted(budget_stages.STAGES))
def test_the_budget_steps_through_each_scripts_loop(stage):
    expected = script_loop(budget_stages.SCRIPTS[stage])
    assert "backward" in expected and "ema_update" in expected
    assert budget_loop(stage) == expected


def test_the_docs_table_is_the_one_the_results_file_gives():
    budget_table.check()
    doc = (ROOT / "docs" / "gpu-budget.md").read_text()
    assert "(docs/gpu-budget.md)" in (ROOT / "README.md").read_text()  # the training section points here
    assert all(f"`{flags}`" in doc for _, _, flags, _ in budget_table.rows())


def test_the_gpu_check_runs_bench_train_at_a_rows_settings():
    from benchmarks.budget_gpu import bench_args
    argv, (stage, s) = bench_args("--stage video --frames 16 --size 512 --precision fp32 --gradient-checkpointing "
                                  "false", "sd15", "cuda", 6)
    assert stage == "video" and s.frames == 16
    assert " ".join(argv) == ("--size sd15 --stages video --frames 16 --resolution 512 --batch 1 --precision fp32 "
                              "--gradient-checkpointing false --steps 6 --device cuda")


# ---- SD1.5 size: the counts against the peaks measured on an H100 (docs/equivalence.md) -------------
@pytest.mark.slow
@pytest.mark.parametrize("flags, measured_gib", [
    ("--stage video --frames 16 --size 256", 18.4),
    ("--stage image --size 256 --batch 1", 5.3),
    ("--stage adapter --frames 16 --size 256", 8.7)])
def test_sd15_counts_come_within_five_percent_below_the_h100_peaks(flags, measured_gib):
    """The count leaves out what the allocator adds (cuDNN and cuBLAS workspaces, rounding): below, and close."""
    stage, size, fake, s = budget.parse(flags.split())
    result = budget.count(stage, s, size, fake)
    assert 0.95 * measured_gib < result["peak"] / GIB < measured_gib
