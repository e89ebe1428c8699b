"""DDPM beta schedules computed in float64, with the meaning diffusers' `DDPMScheduler` gives each name, plus the
training-only log-SNR schedule and the decoder floor a schedule implies.

diffusers builds its betas in float32; the ELBO's posterior terms divide by 1 - alpha_bar, which float32 rounds
badly for the first timesteps, so every schedule here is evaluated in float64 from the config itself.

`linear_logsnr_betas` is not a diffusers name: diffusers' schedulers accept only their own `beta_schedule` values, so
the training script stores its betas as the config's `trained_betas`, which every diffusers scheduler reads first
(the config's `beta_schedule` then only names the schedule for people and model cards).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..images import BIN_HALF_WIDTH

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
#: the log-SNR schedule's name (training only: its betas travel as `trained_betas`)
LINEAR_LOGSNR = "linear-logsnr"
# log-SNR ends the training flags accept. Above 16, 1 - alpha_bar_0 = sigmoid(-logsnr_max) < 1.2e-7 comes within a
# few float32 rounding steps of 0, and diffusers' float32 DDPMScheduler would see alpha_bar = 1 (a 0/0 variance) from
# about 17.3 on; a noise standard deviation of e^-8 = 3.4e-4 is already 1/23 of an 8-bit bin. Below -20, alpha_bar_T
# = 2e-9 and the prior term is ~1e-9 bits/dim: the extra timesteps would only add noise to pure noise.
LOGSNR_RANGE = (-20.0, 16.0)


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


def linear_logsnr_betas(num_train_timesteps: int, logsnr_max: float, logsnr_min: float) -> np.ndarray:
    """Betas whose log-SNR lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) falls linearly from `logsnr_max` at the
    first timestep to `logsnr_min` at the last (the fixed schedule of Kingma et al. 2021, VDM), in float64.

    Why linear in lambda: with the posterior variance (`fixed_small`) and an eps-prediction, the KL term of the step
    from lambda_{t-1} to lambda_t is (e^(lambda_{t-1} - lambda_t) - 1) / 2 * E||eps - eps_hat||^2 per dimension
    (VDM's discrete-time loss, (SNR_{t-1} - SNR_t) / 2 * ||x_0 - x0_hat||^2, written in eps). For given ends the sum
    of these weights is smallest when every step is the same (Jensen), and no single KL term gets an outsized
    weight, whereas a cosine path between the same ends steps by 1.4 in lambda at the first timestep for T = 1000.
    Only the ends matter to the continuous-time bound (VDM), so they are the parameters; between them this is the
    simplest path that hits them exactly.

    The betas are formed without cancellation: with alpha_bar = sigmoid(lambda) and the step d = lambda_{t-1} -
    lambda_t, beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = sigmoid(-lambda_t) * (1 - e^-d) (d once, not as a
    difference of nearby grid points), and beta_0 = 1 - alpha_bar_0 = sigmoid(-logsnr_max). Every beta lies in (0, 1).

    Args:
        num_train_timesteps (`int`): number of diffusion steps T (at least 2).
        logsnr_max (`float`): lambda at the first timestep (alpha_bar_0 = sigmoid(logsnr_max)).
        logsnr_min (`float`): lambda at the last timestep (alpha_bar_{T-1} = sigmoid(logsnr_min)).

    Raises:
        `ValueError`: fewer than 2 steps, an end that is not finite, or logsnr_max <= logsnr_min.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
    if not (math.isfinite(logsnr_max) and math.isfinite(logsnr_min) and logsnr_max > logsnr_min):
        raise ValueError(f"logsnr_max={logsnr_max} must be finite and exceed logsnr_min={logsnr_min}")
    logsnr = np.linspace(logsnr_max, logsnr_min, num_train_timesteps, dtype=np.float64)
    step = (logsnr_max - logsnr_min) / (num_train_timesteps - 1)
    betas = _sigmoid(-logsnr) * -np.expm1(-step)
    betas[0] = _sigmoid(-logsnr[:1])[0]  # alpha_bar_{-1} = 1: the first step comes from lambda = +inf
    return betas


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) to a few ulps relative everywhere: e^-|x| never overflows, and sigmoid(-13) = 2.3e-6 is not
    formed as a difference of numbers near 1."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def decoder_std(betas: np.ndarray) -> float:
    """The standard deviation sigma_1 of the decoder p(x_0 | x_1) of the fixed variance types: sqrt(beta~_1) =
    sqrt(beta_1 (1 - alpha_bar_0) / (1 - alpha_bar_1)), the posterior variance of the next step, to which the DDPM
    code clips t = 0 (`fixed_small` and `fixed_large` both use it there; it is also the smallest variance
    `learned_range` reaches at t = 0).

    Args:
        betas (`np.ndarray`): the float64 betas of the training chain (at least 2).
    """
    betas = np.asarray(betas, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return math.sqrt(betas[1] * (1.0 - alphas_cumprod[0]) / (1.0 - alphas_cumprod[1]))


def decoder_floor_bits_per_dim(sigma: float) -> float:
    """The smallest decoder term L_0 = -log2 p(x_0 | x_1) per interior pixel that a Gaussian decoder of standard
    deviation `sigma` can reach, whatever its mean: the mass of N(x_0, sigma^2) on x_0's 8-bit bin (half-width 1/255),
    -log2(2 Phi(1 / (255 sigma)) - 1) = -log2 erf(1 / (255 sigma sqrt 2)). (Pixels at -1 or 1 have open-ended bins
    and can do better.) sigma = 0.02 gives 2.69 bits/dim.

    Args:
        sigma (`float`): the decoder's standard deviation, > 0.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    # erf(z) = 1 - erfc(z): log1p keeps the small floor of a sharp decoder instead of rounding it to 0
    return -math.log1p(-math.erfc(BIN_HALF_WIDTH / (sigma * math.sqrt(2.0)))) / math.log(2.0)
