"""Moved to `hf_ddpm_ncsn.evaluation.metrics`; this module keeps the old import path working."""

from .evaluation.metrics import (
    class_coverage,
    distance_summary,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    nearest_neighbour_distances,
    polynomial_kernel,
    trace_sqrt_product,
    unbiased_mmd2,
)

__all__ = [
    "class_coverage",
    "distance_summary",
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "nearest_neighbour_distances",
    "polynomial_kernel",
    "trace_sqrt_product",
    "unbiased_mmd2",
]
