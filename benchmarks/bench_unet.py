"""Video-UNet speed and memory: ours vs diffusers' UNetMotionModel, identical weights and inputs.

    python -m benchmarks.bench_unet                      # CPU, a small SD1.5-shaped model, 8 frames
    python -m benchmarks.bench_unet --size sd15 --frames 16 --latent 64 --dtype fp16 --device cuda

Both models run in the same process, alternating (ours, theirs, ours, ...) so that machine noise
hits both alike; the script prints the median time of each, the ratio ours/theirs (below 1 means
ours is faster) and each one's peak extra memory, for a forward pass and for forward+backward.
diffusers is a test-only dependency: install requirements-dev.txt to run this.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch


from runtime import cli
from unet.load import load_unet

SIZES = {  # diffusers UNet2DConditionModel / MotionAdapter widths
    "tiny": dict(block_out_channels=(32, 64), down=("CrossAttnDownBlock2D", "DownBlock2D"), heads=4, context=32),
    "small": dict(block_out_channels=(64, 128, 256, 256), heads=8, context=256,
                  down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)),
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), heads=8, context=768,
                 down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)),
}


def build_pair(size: str, device, dtype):
    """(ours, diffusers reference) with the same random weights."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    s = SIZES[size]
    up = tuple(reversed([t.replace("Down", "Up") for t in s["down"]]))
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(block_out_channels=s["block_out_channels"], down_block_types=s["down"],
                                  up_block_types=up, cross_attention_dim=s["context"],
                                  attention_head_dim=s["heads"], norm_num_groups=32)
    adapter = MotionAdapter(block_out_channels=s["block_out_channels"], motion_num_attention_heads=s["heads"],
                            motion_norm_num_groups=32, use_motion_mid_block=True)
    ref = UNetMotionModel.from_unet2d(unet2d, adapter)
    state = ref.state_dict()
    ours = load_unet({k: v for k, v in state.items() if "motion_modules" not in k},
                     {k: v for k, v in state.items() if "motion_modules" in k}, attention_heads=s["heads"],
                     motion_heads=s["heads"])
    return ours.to(device, dtype), ref.to(device, dtype), s["context"]


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator stats, or on CPU the process's peak RSS (Linux)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.base


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed(fn, device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--latent", type=int, default=32, help="latent height = width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if cli.device_problem(args.device):
        raise cli.UserError(cli.device_problem(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    ours, ref, context_dim = build_pair(args.size, args.device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.frames, args.latent, args.latent, generator=g).to(args.device, dtype)
    text = torch.randn(args.batch, 77, context_dim, generator=g).to(args.device, dtype)
    t = torch.tensor([500] * args.batch, device=args.device)
    text_per_frame = text.repeat_interleave(args.frames, dim=0)  # diffusers wants it once per frame

    def run(model, backward):
        def step():
            if backward:
                model.zero_grad(set_to_none=True)
                out = model(x, t, text) if model is ours else model(x, t, text_per_frame).sample
                out.float().square().mean().backward()
            else:
                with torch.no_grad():
                    model(x, t, text) if model is ours else model(x, t, text_per_frame)
        return step

    print(f"{args.size} video UNet, {args.batch}x{args.frames} frames of {args.latent}x{args.latent} latents, "
          f"{args.dtype} on {args.device} ({torch.get_num_threads()} threads), median of {args.repeats}")
    for backward in (False, True):
        for model in (ours, ref):  # warm-up (allocator, kernels)
            model.train(backward)
            run(model, backward)()
        times, peaks = {"ours": [], "diffusers": []}, {}
        for _ in range(args.repeats):
            for name, model in (("ours", ours), ("diffusers", ref)):
                with PeakMemory(args.device) as mem:
                    times[name].append(timed(run(model, backward), args.device))
                peaks[name] = max(peaks.get(name, 0), mem.peak)
        ours_t, ref_t = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        label = "forward+backward" if backward else "forward"
        print(f"{label:>17}: ours {ours_t * 1e3:9.1f} ms  diffusers {ref_t * 1e3:9.1f} ms  ratio {ours_t / ref_t:.3f}"
              f"   peak extra memory ours {peaks['ours'] / 2**20:8.1f} MiB"
              f"  diffusers {peaks['diffusers'] / 2**20:8.1f} MiB")


if __name__ == "__main__":
    sys.exit(cli.run(main))
