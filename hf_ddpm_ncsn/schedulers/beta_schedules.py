"""DDPM beta schedules computed in float64, with the meaning diffusers' `DDPMScheduler` gives each name.

diffusers builds its betas in float32; the ELBO's posterior terms divide by 1 - alpha_bar, which float32 rounds
badly for the first timesteps, so every schedule here is evaluated in float64 from the config itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def _alpha_bar_betas(num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(t), t in [0, 1], into betas (Nichol & Dhariwal 2021, eq. 17)."""
    t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    values = np.array([alpha_bar(x) for x in t], dtype=np.float64)
    return np.minimum(1.0 - values[1:] / values[:-1], max_beta)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alpha_bar) so that the last timestep has zero SNR (Lin et al. 2023, Algorithm 1)."""
    sqrt_alpha_bar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alpha_bar[0], sqrt_alpha_bar[-1]
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """Return the float64 betas of a DDPM training chain.

    Args:
        num_train_timesteps (`int`): number of diffusion steps T.
        beta_start (`float`): first beta of the linear-type schedules.
        beta_end (`float`): last beta of the linear-type schedules.
        beta_schedule (`str`): one of `BETA_SCHEDULES`; ignored when `trained_betas` is given.
        trained_betas (`Sequence[float]`, *optional*): explicit betas, used as given.
        rescale_betas_zero_snr (`bool`, defaults to `False`): rescale to zero terminal SNR.
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _alpha_bar_betas(num_train_timesteps, _cosine_alpha_bar)
    elif beta_schedule == "laplace":
        betas = _alpha_bar_betas(num_train_timesteps, _laplace_alpha_bar)
    elif beta_schedule == "sigmoid":
        x = np.linspace(-6.0, 6.0, num_train_timesteps, dtype=np.float64)
        betas = 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; accepted values: {BETA_SCHEDULES}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas
