import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from hf_ddpm_ncsn.metrics import (
    class_coverage,
    distance_summary,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    nearest_neighbour_distances,
)


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def _direct_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with a general matrix square root of sigma1 sigma2."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * np.real(root)))


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_commuting_covariances_is_the_closed_form_in_their_common_basis():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    mu = rng.normal(size=5)
    expected = np.sum(mu**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu, q @ np.diag(a) @ q.T, np.zeros(5), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_non_commuting_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    for dim in (2, 7, 20):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
        assert not np.allclose(s1 @ s2, s2 @ s1)
        expected = _direct_frechet(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_frechet_distance_is_finite_for_singular_covariances():
    # 5 feature vectors in 12 dimensions: rank-4 covariances, where sqrtm of the product is ill-conditioned
    rng = np.random.default_rng(4)
    mu1, s1 = feature_statistics(rng.normal(size=(5, 12)))
    mu2, s2 = feature_statistics(rng.normal(size=(5, 12)) + 1)
    got = frechet_distance(mu1, s1, mu2, s2)
    eps = 1e-8 * np.eye(12)
    assert math.isfinite(got) and got > 0
    assert got == pytest.approx(_direct_frechet(mu1, s1 + eps, mu2, s2 + eps), rel=1e-5)


def test_feature_statistics_are_the_mean_and_unbiased_covariance():
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(features)
    x = features.double().numpy()
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(features[:1])


def _hand_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / len(a) + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_with_one_subset_is_the_hand_computed_unbiased_mmd():
    x = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 0.5]])
    y = np.array([[1.0, 1.0], [0.0, -1.0], [3.0, 1.0]])
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=10)
    assert mean == pytest.approx(_hand_mmd2(x.tolist(), y.tolist()), rel=1e-12)
    assert std == 0.0


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shifted_one():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    mean, std = kernel_inception_distance(a, b, num_subsets=30, subset_size=300)
    assert abs(mean) < 3 * std
    shifted_mean, shifted_std = kernel_inception_distance(a, b + 0.5, num_subsets=30, subset_size=300)
    assert shifted_mean > 10 * shifted_std and shifted_mean > 20 * abs(mean)


def test_kid_caps_the_subset_size_at_the_smaller_set():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(8, 4))
    mean, _ = kernel_inception_distance(a, b, num_subsets=3, subset_size=1000)
    assert math.isfinite(mean)
    with pytest.raises(ValueError, match="at least 2 rows"):
        kernel_inception_distance(a, b[:1])


def test_coverage_is_one_for_uniform_predictions_and_zero_for_a_single_class():
    uniform = class_coverage(np.full((40, 10), 0.1))
    assert uniform["normalized_coverage"] == pytest.approx(1.0)
    assert uniform["entropy"] == pytest.approx(math.log(10)) and uniform["max_entropy"] == pytest.approx(math.log(10))
    one_class = np.zeros((40, 4))
    one_class[:, 2] = 1
    collapsed = class_coverage(one_class)
    assert collapsed["normalized_coverage"] == 0.0
    assert collapsed["class_fractions"] == [0.0, 0.0, 1.0, 0.0]


def test_coverage_of_confident_balanced_predictions_is_one_and_fractions_count_argmaxes():
    probabilities = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.9 + 0.1 / 3
    coverage = class_coverage(torch.from_numpy(probabilities))
    assert coverage["normalized_coverage"] == pytest.approx(1.0)
    assert coverage["class_fractions"] == pytest.approx([1 / 3] * 3)


def test_nearest_neighbour_distances_on_a_hand_example():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    samples = np.array([[0.1, 0.0], [1.0, 1.0], [0.0, 0.4]])
    # nearest: (0, 0) at 0.1; (1, 0) or (0, 1) at 1; (0, 0) at 0.4
    np.testing.assert_allclose(nearest_neighbour_distances(samples, train), [0.1, 1.0, 0.4], rtol=1e-12)


def test_a_copied_training_image_is_at_distance_zero_whatever_the_chunking():
    rng = np.random.default_rng(7)
    train = rng.uniform(size=(50, 1, 8, 8))
    samples = np.concatenate([train[[3, 17]], rng.uniform(size=(5, 1, 8, 8))])
    distances = nearest_neighbour_distances(samples, train, chunk_size=2)
    assert distances[0] == 0.0 and distances[1] == 0.0 and (distances[2:] > 0).all()
    np.testing.assert_array_equal(distances, nearest_neighbour_distances(samples, train, chunk_size=1000))
    brute = np.linalg.norm(samples.reshape(7, 1, -1) - train.reshape(1, 50, -1), axis=2).min(axis=1)
    np.testing.assert_allclose(distances, brute, rtol=1e-12)


def test_distance_summary():
    assert distance_summary(np.array([3.0, 1.0, 2.0, 10.0])) == {"min": 1.0, "median": 2.5, "mean": 4.0}
