"""Likelihood in bits per dimension.

- `elbo`: the DDPM's ELBO, every term (`elbo_bpd`) or a stratified estimate (`stratified_elbo_bpd`).
"""

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
    "ModelFn",
    "StratifiedELBOOutput",
    "discretized_gaussian_log_likelihood",
    "elbo_bpd",
    "normal_kl",
    "prior_bpd",
    "stratified_elbo_bpd",
    "stratified_timesteps",
    "stratum_bounds",
    "vb_terms_bpd",
]
