"""The noise processes behind both families: x_t = alpha_t x_0 + sigma_t z on a table of T levels.

NCSN and DDPM are one object under two processes (Song et al. 2021): NCSN's levels are **variance exploding**
(alpha_t = 1, sigma_t geometric), DDPM's timesteps **variance preserving** (alpha_t = sqrt(alpha_bar_t),
sigma_t = sqrt(1 - alpha_bar_t)). Everything that only depends on (alpha_t, sigma_t) is written once here: noising,
the per-sample table lookup, and the conversions between what a network may predict. With
eps = (x_t - alpha_t x_0) / sigma_t and q_t the marginal density of x_t,

    score = grad log q_t(x_t) ~ -eps / sigma_t                      (denoising score matching, Vincent 2011)
    x_0   ~ (x_t - sigma_t eps) / alpha_t = (x_t + sigma_t^2 score) / alpha_t        (Tweedie's formula)
    v     = alpha_t eps - sigma_t x_0                                 (Salimans & Ho 2022)

so an eps-predicting DDPM network *is* a score model and an NCSN score network predicts eps = -sigma_t s. The
schedulers, the losses and the likelihoods call these functions instead of writing the formulas again.

Between its levels a process is extended to continuous time t in [0, T - 1] (the probability-flow ODE integrates
it): log alpha_t and log sigma_t are interpolated monotonically (PCHIP: smooth, no overshoot, exact on the levels
and exact for NCSN's geometric sigmas), which defines the SDE dx = f(t) x dt + g(t) dw with f = d log alpha / dt and
g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, eq. 28) whose marginals these are.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from .validation import check_choice

#: What a network may predict, under the names diffusers' schedulers use.
PREDICTION_TYPES = ("epsilon", "score", "sample", "v_prediction")


def gather(values: np.ndarray, t: int | torch.Tensor, like: torch.Tensor | None = None) -> float | torch.Tensor:
    """values[t], the per-sample table lookup of every schedule.

    A Python float for one level (an int or a 0-d tensor: the cheapest operand of an elementwise op, the sampling
    hot path), else a tensor of `like`'s dtype and device shaped (B, 1, ..., 1) to broadcast against it.

    Args:
        values (`np.ndarray`): the table, one value per level.
        t (`int` or `torch.Tensor`): a level index, or one per sample (B,): integers (a table has no value between
            its levels).
        like (`torch.Tensor`, *optional*): the tensor the result multiplies (needed for a timestep per sample).
    """
    _check_index(t)
    if _is_scalar(t):
        return float(values[int(t)])
    if like is None:
        raise ValueError("a timestep per sample needs `like`, the tensor the looked-up values multiply")
    out = torch.from_numpy(values)[t.detach().cpu().long()].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def _is_scalar(t) -> bool:
    return not isinstance(t, torch.Tensor) or t.ndim == 0


def is_float(t) -> bool:
    """Whether a timestep is given as a real number (a time of the continuous extension) rather than an index."""
    return isinstance(t, float) or isinstance(t, torch.Tensor) and t.is_floating_point()


def is_fractional_scalar(t) -> bool:
    """Whether t is one level between the tables' levels (the continuous extension's domain)."""
    return _is_scalar(t) and not float(t).is_integer()


def _check_index(t: int | torch.Tensor) -> None:
    if isinstance(t, torch.Tensor) and t.is_floating_point() or isinstance(t, float) and not t.is_integer():
        raise TypeError(f"timestep must be an integer level index to look up a schedule table, got {t!r}")


def _unscale(x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """x / alpha, without a pass over x for the variance-exploding process's alpha = 1."""
    return x if isinstance(alpha, float) and alpha == 1.0 else x / alpha


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def denoising_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||prediction - target||^2 / D per sample (B,): the denoising loss of both families in its own target."""
    return mean_flat((prediction - target) ** 2)


class ContinuousMarginal(NamedTuple):
    """The process at a real time t: x_t = alpha x_0 + sigma z, and the log-rates of alpha and sigma."""

    alpha: float
    sigma: float
    dlog_alpha: float  # d log alpha_t / dt
    dlog_sigma: float  # d log sigma_t / dt


class NoiseProcess:
    """x_t = alpha_t x_0 + sigma_t z at level index t in [0, T), a larger index being more noise.

    The tables are float64 (NumPy, as the schedules are computed); lookups go through `gather`.

    Args:
        alphas (`np.ndarray`): alpha_t, shape (T,).
        sigmas (`np.ndarray`): sigma_t, shape (T,), positive.
    """

    def __init__(self, alphas: np.ndarray, sigmas: np.ndarray):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)

    def alpha(self, t: int | torch.Tensor, like: torch.Tensor | None = None) -> float | torch.Tensor:
        """alpha_t as `gather` returns it."""
        return gather(self.alphas, t, like)

    def sigma(self, t: int | torch.Tensor, like: torch.Tensor | None = None) -> float | torch.Tensor:
        """sigma_t as `gather` returns it."""
        return gather(self.sigmas, t, like)

    def marginal(
        self, t: float | torch.Tensor, like: torch.Tensor | None = None
    ) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(alpha_t, sigma_t) of q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I).

        Integer levels (a scalar or one per sample) read the tables, as `gather` returns them; a fractional scalar
        t in [0, T - 1], or any float scalar without `like`, gets the continuous extension (the tables' values at
        integers), as Python floats.
        """
        if is_fractional_scalar(t) or like is None and _is_scalar(t) and is_float(t):
            return self.continuous_marginal(t)[:2]
        return self.alpha(t, like), self.sigma(t, like)

    @property
    def num_levels(self) -> int:
        return len(self.sigmas)

    def continuous_marginal(self, t: float | torch.Tensor) -> ContinuousMarginal:
        """alpha_t, sigma_t and their log-rates at a real time t in [0, T - 1] (the tables' values at integers)."""
        t = float(t)
        if not 0.0 <= t <= self.num_levels - 1:
            raise ValueError(f"timestep={t} is outside the process's time range [0, {self.num_levels - 1}]")
        if self.num_levels < 2:
            raise ValueError("a process with a single level has no continuous extension")
        return self._continuous(t)

    def sde_coefficients(self, t: float | torch.Tensor) -> tuple[float, float]:
        """(f(t), g(t)^2) of the SDE dx = f x dt + g dw whose marginals are this process at real time t."""
        _, sigma, dlog_alpha, dlog_sigma = self.continuous_marginal(t)
        return dlog_alpha, 2.0 * sigma**2 * (dlog_sigma - dlog_alpha)

    @cached_property
    def _log_interpolants(self) -> tuple[PchipInterpolator, PchipInterpolator]:
        levels = np.arange(self.num_levels, dtype=np.float64)
        return PchipInterpolator(levels, np.log(self.alphas)), PchipInterpolator(levels, np.log(self.sigmas))

    def _continuous(self, t: float) -> ContinuousMarginal:
        log_alpha, log_sigma = self._log_interpolants
        at_level = t.is_integer()  # exactly the tables on the levels, not exp(log(.)) of them
        alpha = float(self.alphas[int(t)]) if at_level else float(np.exp(log_alpha(t)))
        sigma = float(self.sigmas[int(t)]) if at_level else float(np.exp(log_sigma(t)))
        return ContinuousMarginal(alpha, sigma, float(log_alpha(t, 1)), float(log_sigma(t, 1)))

    def _power(self, alpha: float | torch.Tensor, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """alpha_t^2 + sigma_t^2, the total variance of x_t for unit-variance data (the v conversions divide by it)."""
        return alpha**2 + sigma**2

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t noise, one level per sample (or one for all)."""
        alpha, sigma = self.marginal(t, x0)
        return alpha * x0 + sigma * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """v = alpha_t noise - sigma_t x_0, the v_prediction target."""
        alpha, sigma = self.marginal(t, x0)
        return alpha * noise - sigma * x0

    # ----------------------------------------------------------------------------------------------------------
    # Conversions between predictions (each looks (alpha_t, sigma_t) up once)
    def to_epsilon(
        self, output: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The noise eps implied by a network output predicting `prediction_type` at (x_t, t)."""
        return self._epsilon(output, prediction_type, x_t, *self.marginal(t, x_t))

    def to_score(
        self, output: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The score grad log q_t(x_t) implied by the output: -eps / sigma_t."""
        if prediction_type == "score":
            return output
        alpha, sigma = self.marginal(t, x_t)
        return self._epsilon(output, prediction_type, x_t, alpha, sigma) * (-1.0 / sigma)

    def from_score(
        self, score: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The network output of `prediction_type` that implies `score` at (x_t, t): the inverse of `to_score`, so a
        sampler can steer a model by adding to its score (reconstruction guidance) and hand the scheduler an output."""
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if prediction_type == "score":
            return score
        alpha, sigma = self.marginal(t, x_t)
        eps = -sigma * score
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "sample":
            return _unscale(x_t - sigma * eps, alpha)
        return (self._power(alpha, sigma) * eps - sigma * x_t) / alpha

    def to_sample(
        self, output: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The x_0 estimate implied by the output (Tweedie's E[x_0 | x_t] = (x_t + sigma_t^2 score) / alpha_t for a
        score or eps model)."""
        alpha, sigma = self.marginal(t, x_t)
        if prediction_type == "sample":
            return output
        if prediction_type == "score":
            # one fused kernel for a scalar level (the sampling hot path)
            x0 = x_t.add(output, alpha=sigma**2) if isinstance(sigma, float) else x_t + sigma**2 * output
            return _unscale(x0, alpha)
        if prediction_type == "v_prediction":
            return (alpha * x_t - sigma * output) / self._power(alpha, sigma)
        return _unscale(x_t - sigma * self._epsilon(output, prediction_type, x_t, alpha, sigma), alpha)

    def _epsilon(self, output, prediction_type: str, x_t, alpha, sigma) -> torch.Tensor:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if prediction_type == "epsilon":
            return output
        if prediction_type == "score":
            return -sigma * output
        if prediction_type == "sample":
            return (x_t - alpha * output) / sigma
        return (sigma * x_t + alpha * output) / self._power(alpha, sigma)

    def target(
        self, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """What a network predicting `prediction_type` should output for x_t = alpha_t x_0 + sigma_t noise."""
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "score":
            return noise * (-1.0 / self.marginal(t, x0)[1])
        if prediction_type == "sample":
            return x0
        return self.velocity(x0, noise, t)


class VarianceExploding(NoiseProcess):
    """x_t = x_0 + sigma_t z (NCSN, SMLD): alpha_t = 1, the noise grows to sigma_max.

    Args:
        sigmas (`np.ndarray`): sigma_t, increasing.
    """

    def __init__(self, sigmas: np.ndarray):
        sigmas = np.asarray(sigmas, dtype=np.float64)
        super().__init__(np.ones_like(sigmas), sigmas)

    def alpha(self, t: int | torch.Tensor, like: torch.Tensor | None = None) -> float:
        _check_index(t)
        return 1.0  # a Python 1.0 multiplies exactly, without building a tensor of ones


class VariancePreserving(NoiseProcess):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) z (DDPM): alpha_t^2 + sigma_t^2 = 1.

    Args:
        alphas_cumprod (`np.ndarray`): alpha_bar_t, decreasing in (0, 1).
    """

    def __init__(self, alphas_cumprod: np.ndarray):
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.alphas_cumprod = alphas_cumprod
        super().__init__(np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod))

    def _power(self, alpha: float | torch.Tensor, sigma: float | torch.Tensor) -> float:
        return 1.0  # exactly, rather than the float rounding of alpha^2 + sigma^2

    @cached_property
    def _log_alpha_bar(self) -> PchipInterpolator:
        return PchipInterpolator(np.arange(self.num_levels, dtype=np.float64), np.log(self.alphas_cumprod))

    def _continuous(self, t: float) -> ContinuousMarginal:
        # one interpolant, log alpha_bar, so that alpha^2 + sigma^2 = 1 holds between the levels too
        if t.is_integer():
            alpha, sigma = float(self.alphas[int(t)]), float(self.sigmas[int(t)])
        else:
            log_alpha_bar = float(self._log_alpha_bar(t))
            alpha, sigma = float(np.exp(0.5 * log_alpha_bar)), float(np.sqrt(-np.expm1(log_alpha_bar)))
        rate = 0.5 * float(self._log_alpha_bar(t, 1))  # d log alpha / dt
        return ContinuousMarginal(alpha, sigma, rate, -rate * alpha**2 / sigma**2)
