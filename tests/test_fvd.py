"""Frechet distance (metrics/fvd.py) against closed forms and scipy.linalg.sqrtm (a test-only oracle),
including singular and near-singular covariances, where a naive matrix square root goes wrong."""
import numpy as np
import pytest
import scipy.linalg
import torch

from metrics.fvd import feature_statistics, frechet_distance, fvd, trace_sqrt_product


def random_covariance(rng, d: int, rank: int | None = None, floor: float = 0.0) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + floor * np.eye(d)


def scipy_frechet(mu_1, s_1, mu_2, s_2) -> float:
    root = scipy.linalg.sqrtm(s_1 @ s_2)
    return float(np.sum((mu_1 - mu_2) ** 2) + np.trace(s_1 + s_2) - 2 * np.trace(root).real)


def test_commuting_diagonal_covariances_have_the_closed_form():
    """N(m1, diag a) vs N(m2, diag b): |m1 - m2|^2 + sum (sqrt a - sqrt b)^2, tiny and zero variances included."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 3, 40), rng.uniform(0, 3, 40)
    a[:5], b[3:8] = 1e-12, 0.0
    mu_1, mu_2 = rng.standard_normal(40), rng.standard_normal(40)
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu_1, np.diag(a), mu_2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_one_dimension_is_mean_and_standard_deviation_gap():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-14)


def test_general_covariances_agree_with_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        s_1, s_2 = random_covariance(rng, d), random_covariance(rng, d)
        mu_1, mu_2 = rng.standard_normal(d), rng.standard_normal(d)
        assert trace_sqrt_product(torch.tensor(s_1), torch.tensor(s_2)) == pytest.approx(
            np.trace(scipy.linalg.sqrtm(s_1 @ s_2)).real, rel=1e-10)
        assert frechet_distance(mu_1, s_1, mu_2, s_2) == pytest.approx(scipy_frechet(mu_1, s_1, mu_2, s_2), rel=1e-10)


def test_near_singular_covariances_agree_with_scipy_and_stay_finite():
    """Rank 5 of 32 plus 1e-9 on the diagonal (fewer videos than feature dimensions look like this)."""
    rng = np.random.default_rng(2)
    s_1, s_2 = random_covariance(rng, 32, rank=5, floor=1e-9), random_covariance(rng, 32, rank=7, floor=1e-9)
    mu = rng.standard_normal(32)
    ours = frechet_distance(mu, s_1, mu + 0.1, s_2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(scipy_frechet(mu, s_1, mu + 0.1, s_2), rel=1e-6)


def test_a_set_against_itself_is_zero_even_when_its_covariance_is_singular():
    x = np.random.default_rng(3).standard_normal((10, 64))  # 10 samples in 64 dimensions: rank 9
    assert abs(fvd(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))
    shifted = x + 0.5  # a pure shift moves only the mean term: 64 * 0.25
    assert fvd(x, shifted) == pytest.approx(16.0, rel=1e-9)


def test_statistics_are_float64_with_unbiased_covariance():
    x = np.random.default_rng(4).standard_normal((50, 6)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.astype(np.float64), rowvar=False, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(mu.numpy(), x.astype(np.float64).mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


def test_agrees_with_the_toy_worlds_own_frechet_distance():
    """The toy FVD (toy/classifier.py, toy/evaluate.py, toy/compare.py) is this Frechet distance."""
    from toy.classifier import frechet_distance as toy_frechet
    rng = np.random.default_rng(5)
    a, b = torch.tensor(rng.standard_normal((200, 16))), torch.tensor(rng.standard_normal((150, 16)) * 1.3 + 0.2)
    assert fvd(a, b) == pytest.approx(toy_frechet(a, b), rel=1e-9)
