"""Noise-level and step-size rules of NCSNv2 ("Improved Techniques for Training Score-Based Generative
Models", Song & Ermon 2020), expressed in this package's step-size convention.

NCSNv2 writes the Langevin update as x + alpha s + sqrt(2 alpha) z with alpha_i = eps' sigma_i^2 / sigma_min^2;
`NCSNScheduler` writes x + (eta / 2) s + sqrt(eta) z with eta_i = eps sigma_i^2 / sigma_min^2, so eps = 2 eps'.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def sigma_max_from_data(data: torch.Tensor, chunk_size: int = 1024) -> float:
    """Technique 1: sigma_max is the largest Euclidean distance between two training points.

    Args:
        data (`torch.Tensor`): training points, shape (N, ...), flattened per point.
        chunk_size (`int`, defaults to 1024): rows per distance block, to bound memory.
    """
    points = data.reshape(data.shape[0], -1).to(torch.float64)
    if points.shape[0] < 2:
        raise ValueError(f"data needs at least 2 points to measure a distance, got {points.shape[0]}")
    largest = 0.0
    for start in range(0, points.shape[0], chunk_size):
        block = torch.cdist(points[start : start + chunk_size], points)
        largest = max(largest, float(block.max()))
    return largest


def overlap_of_levels(gamma: float | np.ndarray, data_dim: int) -> np.ndarray:
    """Technique 2's left-hand side Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma): how
    much the shell of radius ~sqrt(D) sigma_i overlaps the next level's, for gamma = sigma_{i+1} / sigma_i."""
    gamma = np.asarray(gamma, dtype=np.float64)
    centre = math.sqrt(2.0 * data_dim) * (gamma - 1.0)
    return _normal_cdf(centre + 3.0 * gamma) - _normal_cdf(centre - 3.0 * gamma)


def noise_level_ratio(data_dim: int, target: float = 0.5) -> float:
    """Technique 2: the ratio gamma = sigma_{i+1} / sigma_i of consecutive geometric levels for which
    `overlap_of_levels(gamma, data_dim)` equals `target` (the paper's 0.5).

    Args:
        data_dim (`int`): data dimension D (C * H * W); the rule needs D >= 5, below that every gamma overlaps.
        target (`float`, defaults to 0.5): required overlap.
    """
    if data_dim < 5:
        raise ValueError(f"data_dim={data_dim}: technique 2 needs a data dimension of at least 5")
    if not 0.0 < target < float(overlap_of_levels(1.0, data_dim)):
        raise ValueError(f"target={target} must lie in (0, {float(overlap_of_levels(1.0, data_dim)):.4f})")
    low, high = 1.0, 2.0
    while overlap_of_levels(high, data_dim) > target:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if overlap_of_levels(mid, data_dim) > target else (low, mid)
    return 0.5 * (low + high)


def num_noise_levels(sigma_min: float, sigma_max: float, data_dim: int, target: float = 0.5) -> int:
    """Technique 2: number of geometric levels from sigma_min to sigma_max with consecutive ratio at most
    `noise_level_ratio(data_dim, target)`."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    gamma = noise_level_ratio(data_dim, target)
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1


def langevin_variance_ratio(
    step_size: float | np.ndarray, sigma_min: float, gamma: float, num_langevin_steps: int
) -> np.ndarray:
    """NCSNv2 Proposition 3 in this package's convention: for point-mass data, a chain started from
    N(0, sigma_{i+1}^2 I) and run for L steps at level sigma_i ends with variance ratio s_L^2 / sigma_i^2 of
    r^{2L} (gamma^2 - c) + c, with r = 1 - eps / (2 sigma_min^2) and c = eps / (sigma_min^2 (1 - r^2))."""
    eps = np.asarray(step_size, dtype=np.float64)
    r = 1.0 - eps / (2.0 * sigma_min**2)
    c = eps / (sigma_min**2 * (1.0 - r**2))
    return r ** (2 * num_langevin_steps) * (gamma**2 - c) + c


def langevin_step_size(sigma_min: float, gamma: float, num_langevin_steps: int) -> float:
    """Technique 4: for a chosen number of Langevin steps L per level, the step size eps that brings
    `langevin_variance_ratio` closest to 1 (the chain's variance matches the level's), in this package's
    convention (twice NCSNv2's eps).

    Args:
        sigma_min (`float`): smallest noise level.
        gamma (`float`): ratio of consecutive noise levels (> 1).
        num_langevin_steps (`int`): L.
    """
    if not gamma > 1.0:
        raise ValueError(f"gamma={gamma} must be > 1")
    if num_langevin_steps < 1:
        raise ValueError(f"num_langevin_steps={num_langevin_steps} must be >= 1")
    # the ratio is a convex combination of gamma^2 and c > 1, so it is > 1 and its minimum is found on a grid
    # over the stable range eps in (0, 2 sigma_min^2), refined around the best point
    low, high = math.log(1e-12 * sigma_min**2), math.log(2.0 * sigma_min**2)
    for _ in range(4):
        grid = np.linspace(low, high, 2001)
        ratios = langevin_variance_ratio(np.exp(grid), sigma_min, gamma, num_langevin_steps)
        best = int(np.argmin(ratios))
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    return float(np.exp(grid[best]))
