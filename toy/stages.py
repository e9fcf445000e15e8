"""The toy pipeline's stages: what each trains, with which of the project's scripts and flags.

Every training stage is one of the project's scripts (train_teacher.py, train_image.py, train_video.py,
train_adapter.py) called with the toy world's folders and flags, and given the toy's validation score
(toy/health.py) as its `score`; only the VAE and the judge have their own small trainers. `Budget` says
how long each trains: the full run and --quick differ only there. toy/run.py runs them in order.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

import train_adapter
import train_image
import train_teacher
import train_video
from runtime import cli
from sd15 import load_sd15, save_sd15
from text import CLIPTextEncoder
from toy.constants import BETA_SCHEDULE, FRAMES, ORIGINAL_STEPS, RESOLUTION, TOY_TEXT, TOY_UNET, VAL_PROMPT
from toy.health import validation_score
from toy.world import CONDITIONS, SEEN, write_dataset, write_degraded_clips, write_stills
from unet.model import UNet

# stages 1, 2 and direct: the loss weighted by lambda_n = alpha_t / sigma_t (docs/toy-world.md: why)
DISTILL_FLAGS = ["--w-min", "2", "--w-max", "5", "--loss", "huber", "--loss-weight", "sqrt_snr",
                 "--val-prompt", VAL_PROMPT]


@dataclasses.dataclass
class Budget:
    """How much of everything: the full run and --quick differ only here."""
    clips: int = 2000
    vae_steps: int = 1500
    teacher_image_steps: int = 6000  # at 1500 its stills put the trail on the prompted side at chance (6.1)
    teacher_image_anneal_at: int = 4000  # then a fifth of the learning rate: sharper squares (6.2)
    teacher_motion_steps: int = 1500  # sqrt_v weight: direction 0.57 at 1000 steps (6.1), 0.93 at 1500
    teacher_checks: int = 3          # validations of each teacher (toy detector accuracy), the last at the end
    val_every_nth: int = 1           # the validations sample every n-th seen combination (1: all 42)
    stage1_steps: int = 900
    stage2_steps: int = 200        # 25 miss the 4-step aim (direction 0.89 against 0.97), 200 meet it (toy-world.md 6)
    stage2_warmup: int = 20        # its learning-rate warm-up (Adam's first full-rate steps cost 4-step quality)
    stage3_steps: int = 120        # the layout ControlNet's teacher-free LoRA
    i2v_steps: int = 600           # the I2V encoder, teacher-free from scratch; 1200 and 2400 gain <= 1 dB (7.5)
    layout_diffusion_steps: int = 600  # the ControlNet learnt on the teacher before its stage-3 adaptation (7.5)
    classifier_steps: int = 120
    outline_stills: int = 1000     # the personalization data: stills in the outline style (never videos)
    style_vae_steps: int = 1500    # the VAE decoder fine-tuned on stills of both styles (docs/toy-world.md)
    personalize_steps: int = 600   # the teacher fine-tuned on them (the shipped personalization), chosen on
    personalize_lr: float = 3e-4   # toy/drift.py's sweep: the style drawn, the motion kept (toy-world.md 4.3)
    personalize_anneal_at: int = 800  # a fifth of the rate from here (the fine-tune's, the LoRA's, the sweep's)
    style_lora_steps: int = 1200   # the same personalization as a style LoRA on the teacher
    drift_steps: int = 1200        # toy/drift.py's sweep: each fine-tune and LoRA run this long
    image_batch: int = 32
    video_batch: int = 8
    eval_count: int = 24           # videos per seed and cell (held-out prompts: half as many)
    eval_seeds: int = 3
    eval_steps: tuple = (1, 2, 4, 8)
    reference_count: int = 512     # real clips behind the toy FVD
    reference_steps: int = 50      # the teacher's many-step reference row


QUICK = Budget(clips=24, vae_steps=10, teacher_image_steps=6, teacher_image_anneal_at=4, teacher_motion_steps=4,
               teacher_checks=1, val_every_nth=7, stage1_steps=4, stage2_steps=3, stage2_warmup=1, stage3_steps=3,
               i2v_steps=3, layout_diffusion_steps=3, classifier_steps=5, outline_stills=8, style_vae_steps=3,
               personalize_steps=3, personalize_anneal_at=2, style_lora_steps=3, drift_steps=3, image_batch=4,
               video_batch=2, eval_count=4, eval_seeds=1, eval_steps=(1, 4), reference_count=32, reference_steps=8)


def direct_steps(b: Budget) -> int:
    """Steps of the one-stage baseline that cost as much as stages 1 and 2: on the 2-core CPU (one thread) a
    stage-1 step (32 stills) takes 0.37 of a direct step (8 clips) and a stage-2 step 0.88 (0.79, 1.91 and
    2.15 s, measured alternately)."""
    return max(1, round(0.37 * b.stage1_steps + 0.88 * b.stage2_steps))


def common(out: Path, stage: str, steps: int, batch: int, seed: int, device: str, lr: float,
           warmup: int | None = None, checks: int = 1) -> list[str]:
    """Flags every training stage shares; the warm-up is a twentieth of the steps unless given, and the
    validation (with the toy detector's per-attribute accuracy) runs `checks` times, the last at the end."""
    warmup = max(1, steps // 20) if warmup is None else warmup
    return ["--out", str(out / stage), "--steps", str(steps), "--batch", str(batch), "--size", str(RESOLUTION),
            "--lr", str(lr), "--warmup-steps", str(warmup), "--seed", str(seed), "--device", device,
            "--workers", "0", "--gradient-checkpointing", "false", "--beta-schedule", BETA_SCHEDULE,
            "--log-every", "10", "--save-every", str(max(1, steps // 4)), "--val-every", str(max(1, steps // checks)),
            "--resume", "true"]  # an interrupted stage continues exactly where it stopped


def teacher_warmup(steps: int) -> int:
    """The teachers' warm-up: a twentieth of their steps and one, at most 150 (the shipped teachers' recipe:
    150 steps for the image model, 76 for the motion module)."""
    return min(150, steps // 20 + 1)


def clip_folder(out: Path, condition: str = "clean") -> Path:
    """The video data under `condition` (toy/world.py:CONDITIONS): the clips as drawn, or their degraded copies."""
    return out / "data" / ("clips" if condition == "clean" else f"clips_{condition}")


def clips(out: Path, condition: str = "clean") -> list[str]:
    """The video data flags: the toy clips under `condition`, every frame."""
    return ["--data", str(clip_folder(out, condition)), "--frames", str(FRAMES), "--stride", "1"]


def stage1_args(out: Path, stage: str, teacher: Path, b: Budget, seed: int, device: str,
                images: Path | None = None) -> list[str]:
    """train_image.py's stage-1 command line: image consistency distillation into a rank-16 spatial LoRA
    (on the training stills, or on `images`)."""
    return ["--sd15", str(teacher), "--data", str(images or out / "data" / "images"), "--lora-rank", "16",
            "--lora-alpha", "16",
            "--original-steps", str(ORIGINAL_STEPS), *DISTILL_FLAGS,
            *common(out, stage, b.stage1_steps, b.image_batch, seed, device, 1e-3)]


def stage2_args(out: Path, stage: str, teacher: Path, teacher_motion: Path, lora: Path, b: Budget, steps: int,
                seed: int, device: str, condition: str = "clean") -> list[str]:
    """train_video.py's stage-2 command line: motion consistency distillation on the stage-1 LoRA."""
    return ["--sd15", str(teacher), "--teacher-motion", str(teacher_motion), "--lora", str(lora), *DISTILL_FLAGS,
            *clips(out, condition), "--original-steps", str(ORIGINAL_STEPS),
            *common(out, stage, steps, b.video_batch, seed, device, 3e-4, b.stage2_warmup)]


def personalization_args(out: Path, stage: str, b: Budget, seed: int, device: str, lr: float,
                         steps: int | None = None, lora_rank: int | None = None) -> list[str]:
    """train_teacher.py's command line for a personalization on the outline stills, from the teacher with the
    style VAE: the image model fine-tuned whole, or with `lora_rank` a style LoRA on it (alpha = rank: scale
    1); `steps` (default b.personalize_steps) at `lr`, a fifth of it from b.personalize_anneal_at."""
    what = ["--train", "unet"] if lora_rank is None else ["--train", "lora", "--lora-rank", str(lora_rank),
                                                          "--lora-alpha", str(lora_rank)]
    return [*what, "--sd15", str(out / "style_vae" / "model.safetensors"), "--data", str(out / "outline_images"),
            "--ema-decay", "0", "--val-prompt", VAL_PROMPT, "--caption-dropout", "0.1",
            "--lr-anneal-at", str(b.personalize_anneal_at), "--lr-anneal-factor", "0.2",
            *common(out, stage, steps or b.personalize_steps, b.image_batch, seed, device, lr)]


def teacher_motion_args(out: Path, stage: str, b: Budget, seed: int, device: str, condition: str = "clean") -> list[str]:
    """train_teacher.py's command line for the teacher's motion module (AnimateDiff's recipe: the image model
    frozen) on the clips under `condition`."""
    return ["--train", "motion", "--sd15", str(out / "teacher_image" / "model.safetensors"), "--ema-decay", "0.99",
            "--loss-weight", "sqrt_v", "--val-prompt", VAL_PROMPT, "--caption-dropout", "0.1",
            *clips(out, condition),
            *common(out, stage, b.teacher_motion_steps, b.video_batch, seed, device, 1e-3,
                    warmup=teacher_warmup(b.teacher_motion_steps), checks=b.teacher_checks)]


def stages(out: Path, b: Budget, seed: int, device: str, condition: str = "clean") -> dict:
    """name -> (the file it leaves, the function that makes it), in the order they run; every video stage
    learns from the clips under `condition` (toy/world.py:CONDITIONS), the image stages from the clean stills."""
    d = out / "data"
    teacher = out / "teacher_image" / "model.safetensors"
    teacher_motion = out / "teacher_motion" / "motion_module.safetensors"
    lora = out / "stage1" / "lora.safetensors"
    student = out / "stage2" / "motion_module.safetensors"
    control = out / "layout_diffusion" / "controlnet.safetensors"
    outline = out / "outline_images"
    personalized = out / "personalize" / "model.safetensors"
    base = out / "style_vae" / "model.safetensors"  # the teacher with a VAE that can draw outlines

    def data():
        write_dataset(d, b.clips, FRAMES, RESOLUTION, seed)

    def degraded():  # the same clips as public video data would have them
        write_degraded_clips(clip_folder(out, condition), d / "clips", CONDITIONS[condition])

    def vae():
        from toy.train_vae import train_vae
        trained, stats = train_vae(b.vae_steps, b.image_batch, seed=seed, device=device)
        print(f"VAE: reconstruction PSNR {stats['psnr']:.1f} dB, scaling factor {stats['scaling_factor']:.4f}")
        torch.manual_seed(seed)  # the teacher starts from our UNet's own initialisation
        save_sd15(out / "vae" / "init.safetensors", UNet(TOY_UNET), trained.cpu(), CLIPTextEncoder(TOY_TEXT),
                  {"toy": json.dumps(stats)})

    teacher_flags = ["--val-prompt", VAL_PROMPT, "--caption-dropout", "0.1"]
    combos = SEEN[::b.val_every_nth]

    def score(objective: str, frames: int):  # what each training script logs at its validations
        return validation_score(objective, frames, combos=combos)

    video = clips(out, condition)
    conditioned = {} if condition == "clean" else {
        f"data_{condition}": (clip_folder(out, condition) / f"{b.clips - 1:05d}.txt", degraded)}
    return {
        "data": (d / "clips" / f"{b.clips - 1:05d}.gif", data),
        **conditioned,
        "vae": (out / "vae" / "init.safetensors", vae),
        "teacher_image": (teacher, lambda: train_teacher.main([
            "--train", "unet", "--sd15", str(out / "vae" / "init.safetensors"), "--data", str(d / "images"),
            "--ema-decay", "0.995", *teacher_flags,
            "--lr-anneal-at", str(b.teacher_image_anneal_at), "--lr-anneal-factor", "0.2",
            *common(out, "teacher_image", b.teacher_image_steps, b.image_batch, seed, device, 1e-3,
                    warmup=teacher_warmup(b.teacher_image_steps), checks=b.teacher_checks)],
            score=score("diffusion", frames=1))),
        # the denoising loss weighted by 1/alpha_t (sqrt_v): with the plain epsilon loss the motion module ignores
        # the direction that the image layers draw, decided at high noise (docs/toy-world.md)
        "teacher_motion": (teacher_motion, lambda: train_teacher.main(
            teacher_motion_args(out, "teacher_motion", b, seed, device, condition),
            score=score("diffusion", frames=FRAMES))),
        "stage1": (lora, lambda: train_image.main(stage1_args(out, "stage1", teacher, b, seed, device),
                                                  score=score("consistency", frames=1))),
        "stage2": (student, lambda: train_video.main(
            stage2_args(out, "stage2", teacher, teacher_motion, lora, b, b.stage2_steps, seed, device, condition),
            score=score("consistency", frames=FRAMES))),
        "stage2_plain_init": (out / "stage2_plain_init" / "motion_module.safetensors", lambda: train_video.main([
            *stage2_args(out, "stage2_plain_init", teacher, teacher_motion, lora, b, b.stage2_steps, seed, device,
                        condition),
            "--init", "plain"], score=score("consistency", frames=FRAMES))),
        # the one-stage baseline at the cost of stages 1 + 2 (direct_steps), drawing w as they do
        "direct": (out / "direct" / "motion_module.safetensors", lambda: train_video.main([
            "--sd15", str(teacher), "--teacher-motion", str(teacher_motion), "--direct", "true",
            "--lora-rank", "16", *DISTILL_FLAGS, *video, "--original-steps",
            str(ORIGINAL_STEPS), *common(out, "direct", direct_steps(b), b.video_batch, seed, device, 3e-4)],
            score=score("consistency", frames=FRAMES))),
        # stage 3 learns faster with a 5x coarser grid (a longer skip) and the target = the online adapter
        # (no EMA lag): I2V 16.8 -> 19.5 dB at 120 steps, layout IoU 0.68 -> 0.75 (docs/toy-world.md)
        "i2v": (out / "i2v" / "i2v_motion_module.safetensors", lambda: train_adapter.main([
            "--adapter", "image_encoder", "--sd15", str(teacher), "--motion", str(student), "--lora", str(lora),
            *video, "--original-steps", "10", "--ema-decay", "0",
            *common(out, "i2v", b.i2v_steps, b.video_batch, seed, device, 3e-3)])),
        # layout control as the paper does it: a ControlNet trained for the diffusion model (the teacher, DDPM
        # loss, as ControlNet-1.1 for SD1.5), then made to fit the consistency model by a teacher-free LoRA on it
        "layout_diffusion": (control, lambda: train_teacher.main([
            "--train", "controlnet", "--sd15", str(teacher), "--motion", str(teacher_motion),
            "--control-data", str(d / "controls"), "--ema-decay", "0.95", "--caption-dropout", "0", *video,
            *common(out, "layout_diffusion", b.layout_diffusion_steps, b.video_batch, seed, device, 1e-3)])),
        "layout": (out / "layout" / "controlnet_lora.safetensors", lambda: train_adapter.main([
            "--adapter", "controlnet", "--controlnet", str(control), "--lora-rank", "16",
            "--sd15", str(teacher), "--motion", str(student), "--lora", str(lora),
            "--control-data", str(d / "controls"), *video, "--original-steps", "10", "--ema-decay", "0",
            *common(out, "layout", b.stage3_steps, b.video_batch, seed, device, 1e-3)])),
        "classifier": (out / "classifier" / "classifier.safetensors", lambda: _classifier(out, b, seed)),
        # personalization (toy/personalize.py measures it): stills of a style no video shows, new clips'
        "outline_images": (outline / f"{b.outline_stills - 1:05d}.png", lambda: write_stills(
            outline, b.outline_stills, FRAMES, RESOLUTION, seed, first=2 * b.clips, style="outline")),
        # the teacher's VAE decoder fine-tuned on stills of both styles (its encoder, the latent space, unchanged)
        "style_vae": (base, lambda: _style_vae(out, teacher, [d / "images", outline], b, seed, device)),
        # the image teacher fine-tuned on them, as personalized SD1.5 models are made
        "personalize": (personalized, lambda: train_teacher.main(
            personalization_args(out, "personalize", b, seed, device, b.personalize_lr),
            score=score("diffusion", frames=1))),
        # the same personalization as a style LoRA on the teacher (its scale: the fusion weight)
        "style_lora": (out / "style_lora" / "lora.safetensors", lambda: train_teacher.main(
            personalization_args(out, "style_lora", b, seed, device, 1e-3, b.style_lora_steps, lora_rank=16),
            score=score("diffusion", frames=1))),
        # the upper bound the paper says is not needed: stage 1 distilled on the personalized model itself
        "stage1_outline": (out / "stage1_outline" / "lora.safetensors", lambda: train_image.main(
            stage1_args(out, "stage1_outline", personalized, b, seed, device, images=outline),
            score=score("consistency", frames=1))),
    }


def _classifier(out: Path, b: Budget, seed: int) -> None:
    from runtime.weights import save_safetensors
    from toy.classifier import train_classifier
    save_safetensors(train_classifier(b.classifier_steps, seed=seed).state_dict(),
                     out / "classifier" / "classifier.safetensors")


def _style_vae(out: Path, teacher: Path, folders: list[Path], b: Budget, seed: int, device: str) -> None:
    from toy.train_vae import finetune_decoder
    model = load_sd15(teacher)
    torch.manual_seed(seed)
    vae = finetune_decoder(model.vae, folders, b.style_vae_steps, b.image_batch, size=RESOLUTION, seed=seed,
                           device=device)
    save_sd15(out / "style_vae" / "model.safetensors", model.unet, vae.cpu(), model.text_encoder,
              {"toy": "the teacher with its VAE decoder fine-tuned on filled and outline stills"})


def load_distilled(out: Path, device: str = "cpu") -> dict:
    """The run's four text-to-video distillations (image_lcm, animatelcm, plain_init, direct), each on
    the teacher's image weights with its spatial LoRA."""
    teacher = out / "teacher_image" / "model.safetensors"
    lora = [(out / "stage1" / "lora.safetensors", 1.0)]
    return {"image_lcm": load_sd15(teacher, out / "teacher_motion" / "motion_module.safetensors", lora, device=device),
            "animatelcm": load_sd15(teacher, out / "stage2" / "motion_module.safetensors", lora, device=device),
            "plain_init": load_sd15(teacher, out / "stage2_plain_init" / "motion_module.safetensors", lora,
                                    device=device),
            "direct": load_sd15(teacher, out / "direct" / "motion_module.safetensors",
                                [(out / "direct" / "lora.safetensors", 1.0)], device=device)}


def load_stage3(out: Path, device: str = "cpu") -> dict:
    """The run's stage-3 models: "i2v" (the I2V encoder and its motion module), "layout_plugged_in" (the
    diffusion model's ControlNet on AnimateLCM as it is) and "layout" (with its teacher-free LoRA)."""
    from unet.controlnet import load_controlnet
    teacher = out / "teacher_image" / "model.safetensors"
    lora = [(out / "stage1" / "lora.safetensors", 1.0)]
    animatelcm = load_sd15(teacher, out / "stage2" / "motion_module.safetensors", lora, device=device)
    models = {"i2v": load_sd15(teacher, out / "i2v" / "i2v_motion_module.safetensors", lora, device=device)}
    for name, adapted in (("layout_plugged_in", False), ("layout", True)):  # before and after stage 3
        models[name] = dataclasses.replace(animatelcm)
        models[name].controlnet = load_controlnet(
            out / "layout_diffusion" / "controlnet.safetensors",
            lora=out / "layout" / "controlnet_lora.safetensors" if adapted else None, device=device).eval()
    for m in models.values():
        m.unet.eval()
    return models


def load_run(out: Path, device: str = "cpu") -> dict:
    """The run's models for evaluation: name -> StableDiffusion (sharing nothing, so LoRAs stay apart)."""
    models = {"teacher": load_sd15(out / "teacher_image" / "model.safetensors",
                                   out / "teacher_motion" / "motion_module.safetensors", device=device),
              **load_distilled(out, device), **load_stage3(out, device)}
    for m in models.values():
        m.unet.eval()
    return models


def with_stage2_steps(budget: Budget, steps: int | None) -> Budget:
    """`budget` with stage 2 trained for `steps` (the --stage2-steps flag); unchanged when None."""
    if steps is None:
        return budget
    if steps < 1:
        raise cli.UserError(f"--stage2-steps {steps}: give at least 1")
    return dataclasses.replace(budget, stage2_steps=steps)


