"""Evaluation metrics of the paper (AnimateLCM v3 sec. 4.1; docs/sources.md), used by evaluate.py.

* `i3d.py`: Inception-v1 I3D (Kinetics-400), loading `i3d_pretrained_400.pt`; its FVD input preparation.
* `fvd.py`: Frechet distance of feature sets in float64, with a stable matrix square root.
* `clipsim.py`: CLIPSIM with open_clip from a local weights file.
* `scorers.py`: what a protocol measures with: I3D + CLIPSIM, or the toy world's judge.
* `real_videos.py`: the real clips' FVD statistics, computed once and cached.
* `report.py`: results.json and results.txt, laid out like the paper's Table 1.
* `ucf101_prompts.yaml`: AnimateLCM's one-line prompt per UCF-101 class (its metrics/UCF101_prompts.yaml).
"""
