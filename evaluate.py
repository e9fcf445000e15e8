"""Evaluate like the paper: FVD and CLIPSIM of generated videos at several step counts (Table 1).

    # one row of Table 1 (AnimateLCM, no CFG) on the UCF-101 protocol; a GPU, weights and clips you have
    python evaluate.py --sd15 v1-5-pruned-emaonly.safetensors --motion AnimateLCM_sd15_t2v.ckpt \\
        --lora AnimateLCM_sd15_t2v_lora.safetensors --name AnimateLCM --steps 1 2 4 8 \\
        --i3d i3d_pretrained_400.pt --clip open_clip_pytorch_model.bin --real-videos UCF-101/ --out eval/
    # the teacher's two rows into the same table: SD1.5 + AnimateDiff v2, DDIM and DPM-Solver++ at CFG 7.5
    python evaluate.py --sd15 ... --motion mm_sd_v15_v2.ckpt --name teacher --sampler ddim dpmpp_2m \\
        --guidance 7.5 --steps 1 2 4 8 --i3d ... --clip ... --real-videos UCF-101/ --out eval/
    python evaluate.py          # the bundled toy model on the toy protocol (judge features), CPU, seconds

Model flags are sample.py's (--sd15 --motion --lora --lora-scale --beta-schedule --beta-end
--original-steps --clip-skip --guidance --negative-prompt --frames --height --width --device --dtype
--vae-dtype --decode-chunk --context-frames --context-overlap): the same loaders and samplers. Each
video is a file under OUT/videos/NAME/SAMPLER-Nsteps/ named by prompt index and seed, written
whole or not at all, so a rerun skips what exists and an interrupted evaluation resumes. Results:
OUT/results.json (every setting, sha256 of every weight file) and OUT/results.txt (Table 1's layout);
runs into one OUT with the same protocol add rows to them. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtime import cli
import sample
from runtime.cli import UserError
from runtime.files import write_json, write_output
from metrics.scorers import FEATURES, PROMPT_SCORES

ROOT = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What is generated and how it is measured; every field is a flag and is written to the results."""
    prompts: str               # a prompts file ("Name: prompt" lines, or one prompt a line), or "toy"
    videos_per_prompt: int
    steps: tuple
    frames: int
    height: int
    width: int
    features: str              # FVD features: i3d-logits (AnimateLCM's), i3d-pool, toy-judge
    prompt_score: str          # clipsim, prompt-accuracy (the toy judge's)
    fvd_generated: int         # generated videos drawn at random for FVD (all if fewer)
    fvd_real: int              # real clips drawn at random for FVD
    resize: str = "squash"     # frames to I3D's 224x224: squash (AnimateLCM's) or center-crop
    real_stride: int = 1       # take every n-th frame of the real clips (not specified by the paper)
    video_format: str = "mp4"  # the cached videos: mp4 (crf 17, small) or npy (exact frames, 12.6 MB at 16x512x512)
    seed: int = 0              # video k of prompt i has seed seed + i * videos_per_prompt + k; also draws the FVD sets
    prompt_limit: int = 0      # only the first N prompts (0: all), for quick checks


# AnimateLCM v3 sec. 4.1 (docs/sources.md): 101 prompts x 24 videos, 16 x 512 x 512; FVD 2048 generated vs 2048 real
PROTOCOLS = {
    "ucf101": Protocol(str(ROOT / "metrics" / "ucf101_prompts.yaml"), 24, (1, 2, 4, 8), 16, 512, 512,
                       "i3d-logits", "clipsim", 2048, 2048),
    "toy": Protocol("toy", 2, (1, 2, 4), 8, 32, 32, "toy-judge", "prompt-accuracy", 2048, 512, "squash", 1, "npy"),
}
NOT_FOR_EVALUATION = ("prompt", "image", "video", "control", "controlnet", "controlnet_lora", "fps", "upscale")
EXPECTED = {"i3d": "i3d_pretrained_400.pt, the I3D Kinetics-400 weights AnimateLCM's metrics/fvd.py loads",
            "clip": "the open_clip weights of --clip-model (the paper's: CLIP-ViT-H-14-laion2B-s32B-b79K, "
                    "open_clip_pytorch_model.bin)",
            "real_videos": "a folder of real clips for FVD (the paper's: UCF-101's .avi files)",
            "judge": "the toy world's judge, toy/weights/toy_classifier.safetensors"}


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(evaluation flags, sample.py's model flags): what this parser does not know goes to sample.py's."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="Any other flag is sample.py's (see python sample.py --help).")
    p.add_argument("--protocol", choices=PROTOCOLS, help="default: toy without --sd15, else ucf101")
    p.add_argument("--name", help="the method's name in the table (default: the motion module's file name)")
    p.add_argument("--sampler", nargs="+", choices=["lcm", "ddim", "dpmpp_2m"], default=["lcm"])
    p.add_argument("--steps", nargs="+", type=int, help="step counts (ucf101: 1 2 4 8; toy: 1 2 4)")
    p.add_argument("--out", default="eval", help="folder: videos, real statistics, results.json and results.txt")
    p.add_argument("--batch", type=int, default=8, help="videos generated at once (a video does not depend on it, "
                   "up to float rounding)")
    p.add_argument("--i3d", help=EXPECTED["i3d"])
    p.add_argument("--clip", help=EXPECTED["clip"])
    p.add_argument("--clip-model", default="ViT-H-14", help="open_clip model name of --clip")
    p.add_argument("--real-videos", help=EXPECTED["real_videos"] + "; the toy protocol draws toy clips without it")
    p.add_argument("--judge", default=str(ROOT / "toy" / "weights" / "toy_classifier.safetensors"),
                   help=EXPECTED["judge"])
    # the protocol's choices (defaults: the preset's, see PROTOCOLS)
    p.add_argument("--prompts", help="'Name: prompt' lines (.yaml) or one prompt a line; 'toy': the toy world's")
    p.add_argument("--videos-per-prompt", type=int, help="ucf101: 24")
    p.add_argument("--features", choices=FEATURES, help="FVD features; ucf101: i3d-logits (AnimateLCM's)")
    p.add_argument("--prompt-score", choices=PROMPT_SCORES, help="ucf101: clipsim")
    p.add_argument("--fvd-generated", type=int, help="generated videos drawn at random for FVD; ucf101: 2048")
    p.add_argument("--fvd-real", type=int, help="real clips drawn at random for FVD; ucf101: 2048")
    p.add_argument("--resize", choices=["squash", "center-crop"], help="frames to I3D's 224x224; squash: AnimateLCM's")
    p.add_argument("--real-stride", type=int, help="every n-th frame of the real clips; default 1")
    p.add_argument("--video-format", choices=["mp4", "npy"], help="cached videos; ucf101: mp4, toy: npy (exact)")
    p.add_argument("--seed", type=int, help="video k of prompt i: seed + i * videos-per-prompt + k; default 0")
    p.add_argument("--prompt-limit", type=int, help="only the first N prompts (quick checks); default 0: all")
    args, rest = p.parse_known_args(argv)
    return args, sample.parse_args(rest)


def resolve(args, model_args) -> Protocol:
    """The protocol: a preset, each field overridden by its flag; the toy model's files when no --sd15."""
    defaults = sample.parse_args([])
    given = [f"--{k.replace('_', '-')}" for k in NOT_FOR_EVALUATION if getattr(model_args, k) != getattr(defaults, k)]
    if given:
        raise UserError(f"{', '.join(given)}: not used by evaluate.py, which generates text-to-video for a prompt set")
    if model_args.sd15 is None:  # the bundled toy model, as sample.py picks it
        if not sample.TOY["sd15"].exists():
            raise UserError("no --sd15 given and no bundled toy model (toy/weights/): pass the weights to evaluate")
        sample.use_toy_model(model_args)
    toy_model = Path(model_args.sd15).resolve() == sample.TOY["sd15"].resolve()
    preset = PROTOCOLS[args.protocol or ("toy" if toy_model else "ucf101")]
    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Protocol)}
    flags.update(frames=model_args.frames, height=model_args.height, width=model_args.width)
    protocol = dataclasses.replace(preset, **{k: (tuple(v) if k == "steps" else v) for k, v in flags.items()
                                              if v is not None})
    model_args.frames, model_args.height, model_args.width = protocol.frames, protocol.height, protocol.width
    return protocol


def check(args, model_args, protocol: Protocol, out: Path) -> None:
    """Every flag, path and the output folder, before any weights are read (one UserError, all problems)."""
    problems = []
    values = {**dataclasses.asdict(protocol), "batch": args.batch}
    for flag in ("videos_per_prompt", "fvd_generated", "fvd_real", "real_stride", "batch"):
        if values[flag] < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1 (got {values[flag]})")
    if protocol.prompt_limit < 0:
        problems.append(f"--prompt-limit must be 0 (all) or more (got {protocol.prompt_limit})")
    if protocol.prompts != "toy" and not Path(protocol.prompts).is_file():
        problems.append(f"--prompts {protocol.prompts}: no such file; expected 'Name: prompt' lines or a prompt a line")
    needed = dict(uses(protocol), real_videos=protocol.features != "toy-judge")
    for flag, wanted in needed.items():
        value, name = getattr(args, flag), "--" + flag.replace("_", "-")
        if wanted and value is None:
            problems.append(f"{name} is missing: pass {EXPECTED[flag]} (nothing is downloaded)")
        elif value is not None and (wanted or flag != "judge") and not Path(value).exists():  # judge: a default
            problems.append(f"{name} {value}: no such file or folder; expected {EXPECTED[flag]}")
    if args.real_videos and Path(args.real_videos).exists() and not Path(args.real_videos).is_dir():
        problems.append(f"--real-videos {args.real_videos} is a file; expected {EXPECTED['real_videos']}")
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out} is a file; name a folder for the videos and results")
    for sampler in args.sampler:  # sample.py's own checks, for the largest step count of every sampler
        checked = argparse.Namespace(**vars(model_args))  # --timestep-spacing is for DDIM and DPM-Solver++ only
        checked.sampler, checked.steps = sampler, max(protocol.steps)
        checked.timestep_spacing = None if sampler == "lcm" else model_args.timestep_spacing
        checked.out = str(out / "videos" / "v.mp4")  # where videos go: writable?
        try:
            sample.check_args(checked, protocol.height, protocol.width)
        except UserError as e:
            problems += [str(e)] if str(e) not in problems else []
    if min(protocol.steps) < 1:
        problems.append(f"--steps must be at least 1 (got {min(protocol.steps)})")
    if problems:
        raise UserError("; ".join(problems))


def evaluate(argv=None) -> int:
    args, model_args = parse_args(argv)
    protocol = resolve(args, model_args)
    out = Path(args.out)
    check(args, model_args, protocol, out)
    all_prompts = read_prompts(protocol.prompts)
    prompts = all_prompts[:protocol.prompt_limit or None]
    if uses(protocol)["judge"]:
        check_toy_prompts(prompts)

    # what is measured, and how the method's videos are made: refused if OUT holds others
    measures = {"protocol": {k: v for k, v in dataclasses.asdict(protocol).items() if k != "steps"},
                "prompts_used": len(prompts), "clip_model": args.clip_model if uses(protocol)["clip"] else None,
                "real_videos": str(Path(args.real_videos).resolve()) if args.real_videos else "toy world",
                "sha256": {k: v for flag, used in uses(protocol).items() if used for k, v in
                           sha256(getattr(args, flag)).items()}}
    same_or_refuse(out / "protocol.json", measures, "results")
    name = args.name or Path(model_args.motion or model_args.sd15).stem
    folder = out / "videos" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    method = method_settings(model_args, protocol, hashlib.sha256(json.dumps(all_prompts).encode()).hexdigest())
    same_or_refuse(folder / "settings.json", method, "videos")

    # the videos: one file each, named by prompt index and seed; those already there are skipped
    prompt_seeds = [(i, protocol.seed + i * protocol.videos_per_prompt + k) for i in range(len(prompts))
                    for k in range(protocol.videos_per_prompt)]
    cells = {(s, n): folder / f"{s}-{n}steps" for s in args.sampler for n in protocol.steps}
    path = {(cell, i, seed): d / f"p{i:03d}-seed{seed}.{protocol.video_format}"
            for cell, d in cells.items() for i, seed in prompt_seeds}
    todo = [key for key, p in path.items() if not p.exists()]
    print(f"{len(path)} videos ({len(prompts)} prompts x {protocol.videos_per_prompt} x {len(cells)} sampler/steps), "
          f"{len(path) - len(todo)} already in {folder}")
    if todo:
        generate_all(model_args, protocol, todo, path, prompts, args.batch, len(path))

    # the measurements: real statistics (cached in OUT), then FVD and the prompt score per sampler and steps
    from metrics.real_videos import real_statistics
    from metrics.report import markdown_table, write_results
    embedder, scorer = measuring(args, protocol, model_args.device)
    real = real_statistics(Path(args.real_videos) if args.real_videos else None, embedder.embed,
                           {"features": protocol.features, "resize": protocol.resize, "sha256": measures["sha256"]},
                           protocol.fvd_real, protocol.frames, protocol.real_stride, protocol.seed, out,
                           draw=None if args.real_videos else toy_world_clips(protocol))
    rows = []
    for cell, d in tqdm(cells.items(), desc="scoring", unit="cell"):
        scores = score_cell([path[cell, i, seed] for i, seed in prompt_seeds], [prompts[i] for i, _ in prompt_seeds],
                            embedder, scorer, real, protocol)
        rows.append({"method": name, "sampler": cell[0], "guidance": model_args.guidance, "steps": cell[1],
                     "timestep_spacing": model_args.timestep_spacing if cell[0] != "lcm" else None, **scores,
                     "videos_folder": str(d), "model": method})
    results = write_results(out, measures, real, rows)
    print(markdown_table(results["rows"], protocol.prompt_score))
    counts = sorted({(r["fvd_generated"], r["fvd_real"]) for r in results["rows"]})
    print("FVD from " + ", ".join(f"{g} generated vs {n} real videos" for g, n in counts) +
          "; FVD falls as the counts grow, so compare only numbers of equal counts")
    print(f"wrote {out / 'results.json'} and {out / 'results.txt'}")
    return 0


def generate_all(model_args, protocol: Protocol, todo: list, path: dict, prompts: list[str], batch: int,
                 total: int) -> None:
    """Load the model as sample.py does and write every missing video, `batch` of one sampler/steps at a time."""
    from pipeline import Request, check_request
    from sd15 import load_sd15
    model = load_sd15(model_args.sd15, model_args.motion, list(zip(model_args.lora, sample.lora_scales(model_args))),
                      device=model_args.device, dtype=sample.DTYPES[sample.dtype_name(model_args)],
                      vae_dtype=sample.DTYPES[model_args.vae_dtype])
    schedule, original_steps = sample.schedule_and_grid(model_args, model)  # as sample.py
    bar = tqdm(total=total, initial=total - len(todo), desc="videos", unit="video")
    for cell in dict.fromkeys(key[0] for key in todo):
        sampler, steps = cell
        request = Request(prompt="", negative_prompt=model_args.negative_prompt, frames=protocol.frames,
                          height=protocol.height, width=protocol.width, steps=steps, guidance=model_args.guidance,
                          sampler=sampler, timestep_spacing=None if sampler == "lcm" else model_args.timestep_spacing,
                          schedule=schedule,
                          original_steps=original_steps,
                          clip_skip=model_args.clip_skip,
                          context_frames=model_args.context_frames, context_overlap=model_args.context_overlap,
                          decode_chunk=model_args.decode_chunk, progress=False)
        try:
            check_request(model, request)
        except ValueError as e:
            raise UserError(str(e)) from e
        missing = [key for key in todo if key[0] == cell]
        path[missing[0]].parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(missing), batch):
            chunk = missing[start:start + batch]
            frames = uint8_videos(model, request, [prompts[i] for _, i, _ in chunk], [seed for _, _, seed in chunk])
            for key, video in zip(chunk, frames):
                save_video(video, path[key])
            bar.update(len(chunk))
    bar.close()


def uint8_videos(model, request, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """uint8 videos [B, F, H, W, 3] from pipeline.generate: video i is the one for (prompts[i], seeds[i]), whatever
    the batch (each video's noise comes from its own seeded generator)."""
    from media.video import to_uint8
    from pipeline import generate
    try:
        videos = generate(model, dataclasses.replace(request, prompt=prompts, seed=seeds))
    except FloatingPointError as e:
        raise UserError(str(e)) from e
    return np.stack([to_uint8(v) for v in videos])


def save_video(frames: np.ndarray, path: Path) -> None:
    """Write whole or not at all (a temporary name, then a rename): a cut-off run leaves no half video."""
    from media.video import write_video
    if path.suffix == ".npy":
        write_output(path, lambda tmp: tmp.write_bytes(npy_bytes(frames)))
    else:
        write_video(frames, path, fps=8)


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file of `array` (written by Python, a failed write keeps its errno: numpy's own does not)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_video(path: Path) -> np.ndarray:
    from media.video import read_video
    return np.load(path, allow_pickle=False) if path.suffix == ".npy" else read_video(path)


def measuring(args, protocol: Protocol, device: str):
    """(FVD embedder, prompt scorer) of the protocol: I3D and CLIPSIM, or the toy judge for either."""
    from metrics.scorers import clipsim_scorer, i3d_embedder
    from toy.classifier import judge_measures
    judge = judge_measures(Path(args.judge), protocol.frames, device) if uses(protocol)["judge"] else None
    embedder = judge[0] if protocol.features == "toy-judge" else i3d_embedder(
        Path(args.i3d), protocol.features, protocol.resize, device)
    scorer = judge[1] if protocol.prompt_score == "prompt-accuracy" else clipsim_scorer(
        args.clip_model, args.clip, device)
    return embedder, scorer


def score_cell(paths: list[Path], prompts: list[str], embedder, scorer, real: dict, protocol: Protocol) -> dict:
    """FVD of a random `fvd_generated` subset against the real statistics; the prompt score over all videos."""
    from metrics.fvd import feature_statistics, frechet_distance
    features, scores = [], []
    for start in range(0, len(paths), 32):
        videos = [load_video(p) for p in paths[start:start + 32]]
        features.append(embedder.embed(videos))
        scores.append(scorer.score(videos, prompts[start:start + 32]))
    features, scores = torch.cat(features), torch.cat(scores)
    rng = np.random.default_rng(protocol.seed)
    pick = np.sort(rng.choice(len(features), min(protocol.fvd_generated, len(features)), replace=False))
    fvd = frechet_distance(*feature_statistics(features[pick]), real["mu"], real["sigma"])
    return {"fvd": fvd, protocol.prompt_score: float(scores.mean()), "videos": len(paths),
            "fvd_generated": len(pick), "fvd_real": real["count"]}


def toy_world_clips(protocol: Protocol):
    """The toy protocol's real clips, for metrics/real_videos.py: fresh toy-world clips of the seen
    combinations at the protocol's size (what it draws, and how)."""
    from toy.world import SEEN, sample_videos
    return ("seen combinations, toy.world.sample_videos seed 50000",
            lambda count: sample_videos(count, 50_000, SEEN, protocol.frames, protocol.height)[0])


def uses(protocol: Protocol) -> dict[str, bool]:
    """Which measuring networks the protocol needs: {"i3d", "clip", "judge"}."""
    return {"i3d": protocol.features.startswith("i3d"), "clip": protocol.prompt_score == "clipsim",
            "judge": protocol.features == "toy-judge" or protocol.prompt_score == "prompt-accuracy"}


def check_toy_prompts(prompts: list[str]) -> None:
    from toy.world import parse_caption
    for p in prompts:
        try:
            parse_caption(p)
        except ValueError as e:
            raise UserError(f"--prompts: the toy judge reads toy-world captions only: {e}") from e


def read_prompts(source: str) -> list[str]:
    """The prompt set: the toy world's seen captions, a "Name: prompt" YAML list, or one prompt a line."""
    if source == "toy":
        from toy.world import SEEN, caption
        return [caption(*combo) for combo in SEEN]
    lines = [line.strip() for line in Path(source).read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if Path(source).suffix.lower() in (".yaml", ".yml"):
        return [line.split(":", 1)[1].strip().strip("'\"") for line in lines]
    return lines


def sha256(path: str | Path) -> dict[str, str]:
    """{file: sha256} of a weights file, or of every file in a weights folder."""
    path = Path(path)
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    digests = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                h.update(block)
        digests[str(f)] = h.hexdigest()
    return digests


def method_settings(model_args, protocol: Protocol, prompts_sha: str) -> dict:
    """Everything that decides a method's videos besides sampler, steps, prompt index and seed."""
    files = {"sd15": model_args.sd15, "motion": model_args.motion, "lora": model_args.lora}
    return {"files": files, "sha256": {k: v for f in [model_args.sd15, model_args.motion, *model_args.lora] if f
                                       for k, v in sha256(f).items()},
            "lora_scale": sample.lora_scales(model_args), "guidance": model_args.guidance,
            "negative_prompt": model_args.negative_prompt,
            "beta_schedule": model_args.beta_schedule, "beta_end": model_args.beta_end,
            "timestep_spacing": model_args.timestep_spacing,
            "original_steps": model_args.original_steps, "clip_skip": model_args.clip_skip,
            "frames": protocol.frames, "height": protocol.height, "width": protocol.width,
            "dtype": sample.dtype_name(model_args),
            "vae_dtype": model_args.vae_dtype, "context_frames": model_args.context_frames,
            "context_overlap": model_args.context_overlap, "prompts_sha256": prompts_sha}


def same_or_refuse(path: Path, settings: dict, what: str) -> None:
    """Write `settings` to `path`, or refuse when `path` holds other ones (naming the differences)."""
    if path.exists():
        old = json.loads(path.read_text())
        changed = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                   if old.get(k) != settings.get(k)]
        if changed:
            raise UserError(f"{path.parent} holds {what} made with other settings ({'; '.join(changed)}); "
                            "use another --out (or --name), or delete it to start again")
    write_json(path, settings)


def main(argv=None) -> int:
    """The command line as a function: returns the exit code; known problems are one line (cli.py)."""
    return cli.run(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
