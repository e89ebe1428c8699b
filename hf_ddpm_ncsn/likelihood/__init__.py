"""Likelihood in bits per dimension.

- `elbo`: the DDPM's ELBO, every term (`elbo_bpd`) or a stratified estimate (`stratified_elbo_bpd`).
- `probability_flow`: both families' likelihood through the probability-flow ODE (`ode_bpd`).
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
from .probability_flow import ODELikelihoodOutput, ode_bpd

__all__ = [
    "BIN_HALF_WIDTH",
    "SPACINGS",
    "ELBOOutput",
    "HistogramBaselines",
    "ModelFn",
    "ODELikelihoodOutput",
    "StratifiedELBOOutput",
    "discretized_gaussian_log_likelihood",
    "elbo_bpd",
    "histogram_baselines",
    "normal_kl",
    "ode_bpd",
    "prior_bpd",
    "stratified_elbo_bpd",
    "stratified_timesteps",
    "stratum_bounds",
    "vb_terms_bpd",
]
