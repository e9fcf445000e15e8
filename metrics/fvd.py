"""Frechet distance between two sets of video features (FVD, Unterthiner et al. 2018), in float64.

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^1/2)

with unbiased covariances (AnimateLCM's metrics/fvd.py, docs/sources.md). tr (S_1 S_2)^1/2 is computed
as tr (S_1^1/2 S_2 S_1^1/2)^1/2: the same eigenvalues, but of a symmetric positive semi-definite
matrix, so two symmetric eigen-decompositions replace a general matrix square root. Eigenvalues
below the rounding floor (largest x size x float64 epsilon), negative ones included, count as 0:
singular covariances (fewer videos than feature dimensions) would otherwise add the square roots of
rounding noise, ~1e-8 each.
"""
from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], unbiased covariance [D, D]) in float64 of features [N, D], N >= 2."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features [N, D] with N >= 2 to estimate a covariance (got {list(x.shape)})")
    centred = x - x.mean(0)
    return x.mean(0), centred.T @ centred / (len(x) - 1)


def above_rounding(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with those below its rounding floor set to 0."""
    floor = values.abs().max() * len(values) * torch.finfo(values.dtype).eps
    return torch.where(values > floor, values, torch.zeros_like(values))


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * above_rounding(values).sqrt()) @ vectors.T


def trace_sqrt_product(sigma_1: torch.Tensor, sigma_2: torch.Tensor) -> float:
    """tr (S_1 S_2)^1/2 = sum of sqrt(eigenvalues of S_1^1/2 S_2 S_1^1/2)."""
    root = psd_sqrt(sigma_1)
    inner = root @ sigma_2 @ root
    return float(above_rounding(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum())


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
    """Frechet distance between the Gaussians N(mu_1, S_1) and N(mu_2, S_2), in float64."""
    mu_1, mu_2, sigma_1, sigma_2 = (torch.as_tensor(np.asarray(a), dtype=torch.float64)
                                    for a in (mu_1, mu_2, sigma_1, sigma_2))
    mean_term = float((mu_1 - mu_2).square().sum())
    return mean_term + float(sigma_1.trace() + sigma_2.trace()) - 2 * trace_sqrt_product(sigma_1, sigma_2)


def fvd(features_1, features_2) -> float:
    """Frechet distance between two feature sets [N1, D] and [N2, D] (e.g. I3D logits of real and generated videos)."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))
