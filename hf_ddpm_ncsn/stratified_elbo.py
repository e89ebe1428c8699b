"""Moved to `hf_ddpm_ncsn.likelihood` (one loop for the full and the stratified ELBO); kept as an import path."""

from .likelihood import (
    SPACINGS,
    StratifiedELBOOutput,
    stratified_elbo_bpd,
    stratified_timesteps,
    stratum_bounds,
)

__all__ = ["SPACINGS", "StratifiedELBOOutput", "stratified_elbo_bpd", "stratified_timesteps", "stratum_bounds"]
