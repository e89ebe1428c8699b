"""Sample-quality metrics as pure functions of feature vectors, class probabilities and pixels (float64 numpy).

- Fréchet distance (Heusel et al. 2017) between Gaussians fitted to two sets of features;
- kernel distance: the unbiased MMD² with the cubic polynomial kernel of KID (Bińkowski et al. 2018);
- class coverage: the entropy of the mean predicted class distribution;
- nearest-neighbour distances in pixel space, the memorisation check.

None of them knows which network produced the features: evaluated on Inception pool features they are FID and
KID, on another network's features they are that network's Fréchet / kernel distance and must be named so.
"""

from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a set of feature vectors.

    Args:
        features (`np.ndarray` or `torch.Tensor` of shape (N, D)): one feature vector per row, N >= 2.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: mu (D,) and sigma (D, D), float64.
    """
    features = _as_float64(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix, through its eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    # rounding makes the zero eigenvalues of a rank-deficient covariance slightly negative
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((sigma1 sigma2)^{1/2}) for symmetric PSD matrices.

    sigma1 sigma2 is similar to the symmetric PSD matrix M = sigma1^{1/2} sigma2 sigma1^{1/2}, so both have the same
    non-negative eigenvalues and the trace is sum_i sqrt(lambda_i(M)): exact, real, and stable for singular
    covariances, unlike a general (non-symmetric) matrix square root of sigma1 sigma2.

    Args:
        sigma1 (`np.ndarray` of shape (D, D)): a covariance.
        sigma2 (`np.ndarray` of shape (D, D)): a covariance.
    """
    root1 = _psd_sqrt(_as_float64(sigma1))
    middle = root1 @ _as_float64(sigma2) @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mu1, sigma1) and N(mu2, sigma2):

        d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}).

    Args:
        mu1 (`np.ndarray` of shape (D,)): first mean.
        sigma1 (`np.ndarray` of shape (D, D)): first covariance.
        mu2 (`np.ndarray` of shape (D,)): second mean.
        sigma2 (`np.ndarray` of shape (D, D)): second covariance.

    Returns:
        `float`: d², clipped at 0 (rounding can make it a hair negative for identical statistics).
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(x) for x in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    covariance_term = float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(mean_term + covariance_term, 0.0)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's cubic kernel k(x, y) = (x·y / d + 1)³ between the rows of x (N, d) and y (M, d)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased estimate of MMD² between the distributions of the rows of x (m, d) and y (n, d), m, n >= 2:

    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)
    """
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.trace()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.trace()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel distance of Bińkowski et al. (2018): the unbiased MMD² with the cubic polynomial kernel, averaged
    over random subsets (drawn without replacement within each subset) of both sets.

    On Inception pool features this is KID; on any other network's features it is that network's kernel distance.

    Args:
        features1 (`np.ndarray` or `torch.Tensor` of shape (N1, D)): first set of features.
        features2 (`np.ndarray` or `torch.Tensor` of shape (N2, D)): second set of features.
        num_subsets (`int`, defaults to 100): number of subset pairs.
        subset_size (`int`, defaults to 1000): rows per subset, capped at min(N1, N2).
        seed (`int`, defaults to 0): seed of the subset draws.

    Returns:
        `tuple[float, float]`: mean and standard deviation of the per-subset MMD² estimates.
    """
    # the kernels are computed with torch, not numpy: numpy's OpenBLAS threads contend with torch's thread pool,
    # which made these many small products about 30 times slower on a 2-core machine
    features1, features2 = (torch.from_numpy(_as_float64(f)) for f in (features1, features2))
    size = min(subset_size, len(features1), len(features2))
    if size < 2 or num_subsets < 1:
        raise ValueError(f"need at least 2 rows per subset and 1 subset, got subset size {size}, {num_subsets=}")
    rng = np.random.default_rng(seed)
    estimates = [
        unbiased_mmd2(
            features1[rng.choice(len(features1), size, replace=False)],
            features2[rng.choice(len(features2), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))


def class_coverage(probabilities: np.ndarray | torch.Tensor) -> dict[str, float | list[float]]:
    """How evenly a set of images covers the classes, from a classifier's predicted distributions.

    With p̄ the mean predicted class distribution over the images, the coverage is its entropy
    H(p̄) = -sum_k p̄_k log p̄_k (nats), at most log K; `normalized_coverage` = H(p̄) / log K is 1 when the classes
    are equally represented and 0 when every image is confidently one class (mode collapse).

    Args:
        probabilities (`np.ndarray` or `torch.Tensor` of shape (N, K)): predicted class distributions, K >= 2.

    Returns:
        `dict`: `entropy`, `max_entropy` (log K), `normalized_coverage`, and `class_fractions`, the fraction of
        images whose most probable class is k, for each k.
    """
    probabilities = _as_float64(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, K) with K >= 2, got {probabilities.shape}")
    num_classes = probabilities.shape[1]
    mean = probabilities.mean(axis=0)
    positive = mean[mean > 0]
    entropy = float(-(positive * np.log(positive)).sum())
    fractions = np.bincount(probabilities.argmax(axis=1), minlength=num_classes) / len(probabilities)
    return {
        "entropy": entropy,
        "max_entropy": float(np.log(num_classes)),
        "normalized_coverage": entropy / float(np.log(num_classes)),
        "class_fractions": fractions.tolist(),
    }


def nearest_neighbour_distances(
    samples: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor, chunk_size: int = 512
) -> np.ndarray:
    """Euclidean distance from each sample to its nearest training image, in pixel space.

    Images are flattened; pass them on the same scale (the evaluation uses [0, 1]). The nearest neighbour is
    found with ||a||² + ||b||² - 2 a·b, chunked over the samples; its distance is then recomputed directly, so a
    sample that copies a training image is at exactly 0.

    Args:
        samples (`np.ndarray` or `torch.Tensor` of shape (N, ...)): generated images.
        train (`np.ndarray` or `torch.Tensor` of shape (M, ...)): training images of the same shape.
        chunk_size (`int`, defaults to 512): samples per distance-matrix chunk (bounds memory to chunk_size × M).

    Returns:
        `np.ndarray` of shape (N,): the distances.
    """
    samples = _as_float64(samples).reshape(len(samples), -1)
    train = _as_float64(train).reshape(len(train), -1)
    if samples.shape[1] != train.shape[1]:
        raise ValueError(f"samples and train images differ in size: {samples.shape[1]} vs {train.shape[1]} pixels")
    train_sq = (train**2).sum(axis=1)
    distances = np.empty(len(samples))
    for start in range(0, len(samples), chunk_size):
        chunk = samples[start : start + chunk_size]
        nearest = (train_sq[None, :] - 2.0 * chunk @ train.T).argmin(axis=1)  # ||chunk||² is constant per row
        distances[start : start + len(chunk)] = np.linalg.norm(chunk - train[nearest], axis=1)
    return distances


def distance_summary(distances: np.ndarray) -> dict[str, float]:
    """`min`, `median` and `mean` of a set of distances."""
    return {"min": float(np.min(distances)), "median": float(np.median(distances)), "mean": float(np.mean(distances))}


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
