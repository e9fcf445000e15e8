"""The toy world's fixed choices: its size, its models' shapes, the schedule and grid every stage trains
and samples with, and the names of the shipped weights (toy/weights/)."""
from __future__ import annotations

from pathlib import Path

from lcm.schedule import NoiseSchedule
from text import TextEncoderConfig
from unet.config import UNetConfig

FRAMES, RESOLUTION, ORIGINAL_STEPS = 8, 32, 50
BETA_SCHEDULE = "beta_linear"  # AnimateDiff's, for every stage and at sampling time
SCHEDULE = NoiseSchedule(BETA_SCHEDULE)
TEACHER_GUIDANCE = 4.5         # the teacher's classifier-free guidance (inside the distillation's w range 2-5 + 1)
TOY_UNET = UNetConfig(block_out_channels=(64, 128), attention_levels=(True, True), layers_per_block=1,
                      cross_attention_dim=32, attention_heads=4, norm_groups=16)
TOY_TEXT = TextEncoderConfig(width=32, layers=2, heads=4, mlp_width=64)  # frozen, random: a fixed embedding
VAL_PROMPT = "a red circle moving left"

WEIGHTS = Path(__file__).resolve().parent / "weights"
# shipped file in toy/weights/ -> the file of a toy/run.py folder it is made from
SHIPPED = {"toy_sd15.safetensors": "teacher_image/model.safetensors",
           "toy_motion.safetensors": "stage2/motion_module.safetensors",
           "toy_lcm_lora.safetensors": "stage1/lora.safetensors",
           "toy_teacher_motion.safetensors": "teacher_motion/motion_module.safetensors",
           "toy_i2v_motion.safetensors": "i2v/i2v_motion_module.safetensors",
           "toy_layout_controlnet.safetensors": "layout_diffusion/controlnet.safetensors",
           "toy_layout_controlnet_lora.safetensors": "layout/controlnet_lora.safetensors",
           "toy_classifier.safetensors": "classifier/classifier.safetensors"}
