"""Likelihood in bits per dimension.

- `elbo`: the DDPM's ELBO, every term (`elbo_bpd`) or a stratified estimate (`stratified_elbo_bpd`).
- `baselines`: reference bits/dim of simple models fitted on a training split (`histogram_baselines`: a per-pixel
  histogram, one histogram shared by all pixels, the uniform distribution over the grey levels used).
"""

from .baselines import HistogramBaselines, histogram_baselines
from .elbo import (
    BIN_HALF_WIDTH,
    SPACINGS,
    ELBOOutput,
    ModelFn,
    StratifiedELBOOutput,
    discretized_gaussian_log_likelihood,
    elbo_bpd,
    normal_kl,
    prior_bpd,
    stratified_elbo_bpd,
    stratified_timesteps,
    stratum_bounds,
    vb_terms_bpd,
)

__all__ = [
    "BIN_HALF_WIDTH",
    "SPACINGS",
    "ELBOOutput",
    "HistogramBaselines",
    "ModelFn",
    "StratifiedELBOOutput",
    "discretized_gaussian_log_likelihood",
    "elbo_bpd",
    "histogram_baselines",
    "normal_kl",
    "prior_bpd",
    "stratified_elbo_bpd",
    "stratified_timesteps",
    "stratum_bounds",
    "vb_terms_bpd",
]
