"""Likelihood of a DDPM through its ELBO in bits per dimension: every term (`elbo_bpd`), or an unbiased
stratified estimate from K of the T timesteps (`stratified_elbo_bpd`), both from one loop.

Column k of `ELBOOutput.terms` is the term produced by the model's prediction at timestep index k: column 0 is
the decoder NLL L_0 = -log p(x_0 | x_1), column k >= 1 is KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for the
lecture's t = k + 1. `prior` is L_T = KL(q(x_T | x_0) || N(0, I)). Images live in [-1, 1] with 256 bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..images import BIN_HALF_WIDTH
from ..schedulers.noise_process import mean_flat
from ..schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from ..schedulers.validation import check_choice, check_positive_int

_LOG2 = math.log(2.0)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ELBOOutput(BaseOutput):
    """Per-image negative ELBO in bits/dim.

    Args:
        terms (`torch.Tensor` of shape (B, T)): column 0 is L_0, column k >= 1 is L_k (see the module docstring).
        prior (`torch.Tensor` of shape (B,)): L_T = KL(q(x_T | x_0) || N(0, I)).
        bits_per_dim (`torch.Tensor` of shape (B,)): `terms.sum(1) + prior`.
    """

    terms: torch.Tensor
    prior: torch.Tensor
    bits_per_dim: torch.Tensor


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats; arguments broadcast."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    logvar1, logvar2 = (torch.as_tensor(x, dtype=tensor.dtype, device=tensor.device) for x in (logvar1, logvar2))
    # log-ratio + expm1(-log-ratio) is the variance part without the cancellation of -1 + ... + exp(...)
    log_ratio = logvar2 - logvar1
    return 0.5 * (log_ratio + torch.expm1(-log_ratio) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(d)) for d < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(d > -_LOG2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def _log_normal_cdf_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, computed in the tail where it is accurate."""
    # Phi(u) - Phi(l) = Phi(-l) - Phi(-u): reflect bins right of the mean so that both CDFs are small
    reflect = (upper + lower) > 0
    hi = torch.where(reflect, -lower, upper)
    lo = torch.where(reflect, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    gap = (torch.special.log_ndtr(lo) - log_hi).clamp(max=-1e-30)
    return log_hi + _log1mexp(gap)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under N(means, exp(log_scales)^2), elementwise, in nats.

    x holds 8-bit data scaled to [-1, 1]: each value is the centre of a bin of half-width 1/255, and the edge
    bins at -1 and 1 extend to -inf and +inf, so the 256 probabilities sum to 1. Uses the exact normal CDF in log
    space (the DDPM code's tanh approximation is not needed); computed in float64.

    Args:
        x (`torch.Tensor`): bin centres in [-1, 1].
        means (`torch.Tensor`): Gaussian means, broadcastable to x.
        log_scales (`torch.Tensor`): log standard deviations, broadcastable to x.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x64, means, log_scales = (torch.as_tensor(v).to(torch.float64) for v in (x, means, log_scales))
    inv_std = torch.exp(-log_scales)
    upper = (x64 - means + BIN_HALF_WIDTH) * inv_std
    lower = (x64 - means - BIN_HALF_WIDTH) * inv_std
    log_probs = torch.where(
        x64 < -1.0 + BIN_HALF_WIDTH,
        torch.special.log_ndtr(upper),
        torch.where(
            x64 > 1.0 - BIN_HALF_WIDTH,
            torch.special.log_ndtr(-lower),
            _log_normal_cdf_difference(upper, lower),
        ),
    )
    return log_probs.to(dtype)


def prior_bpd(scheduler: DDPMPosteriorScheduler, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in bits/dim."""
    mean, _, log_variance = scheduler.q_mean_variance(x0, scheduler.config.num_train_timesteps - 1)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


def vb_terms_bpd(
    scheduler: DDPMPosteriorScheduler,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """The ELBO term of each sample at its timestep index t, in bits/dim: the decoder NLL where t == 0,
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) elsewhere.

    Args:
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        model_output (`torch.Tensor`): network output at (x_t, t).
        x0 (`torch.Tensor`): clean data in [-1, 1].
        x_t (`torch.Tensor`): x_t ~ q(x_t | x_0).
        t (`torch.Tensor` of shape (B,)): timestep indices.
        clip_denoised (`bool`, defaults to `True`): clip x_0 as the scheduler's config says (the original bits/dim
            code does); `False` for training losses.
    """
    true_mean, _, true_log_variance = scheduler.q_posterior_mean_variance(x0, x_t, t)
    model = scheduler.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model.mean, model.log_variance)) / _LOG2
    decoder_nll = (
        -mean_flat(discretized_gaussian_log_likelihood(x0, means=model.mean, log_scales=0.5 * model.log_variance))
        / _LOG2
    )
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


def _terms_at(
    model_fn: ModelFn,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    generator: torch.Generator | None,
    batch_size: int | None,
    progress: Callable[[Iterable], Iterable] | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ELBO term L_t of image i at timestep timesteps[i, k], for every (i, k): the one loop of both bounds.

    Column k's noise is the k-th draw of shape x0.shape from `generator` whatever the batching, so the terms do not
    depend on `batch_size`. A model call sees up to `batch_size` inputs (default: B, one column per call): several
    columns share a call when B is smaller, images are split when B is larger.

    Returns:
        `torch.Tensor`: (B, K) in bits/dim, of `dtype`.
    """
    num_images, num_columns = timesteps.shape
    batch_size = num_images if batch_size is None else check_positive_int("batch_size", batch_size)
    chunks = list(torch.arange(num_columns).split(max(1, batch_size // num_images)))
    terms = torch.empty(num_images, num_columns, dtype=dtype, device=x0.device)
    for columns in progress(chunks) if progress is not None else chunks:
        noise = torch.cat(
            [randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) for _ in columns]
        )
        t = timesteps[:, columns].T.reshape(-1).to(x0.device)  # column-major: input j is image j % B
        x0_rep = x0.repeat(len(columns), *([1] * (x0.ndim - 1)))
        x_t = scheduler.add_noise(x0_rep, noise, t)
        values = torch.empty(len(t), dtype=dtype, device=x0.device)
        for rows in torch.arange(len(t), device=x0.device).split(batch_size):
            with torch.no_grad():
                output = model_fn(x_t[rows], t[rows])
                values[rows] = vb_terms_bpd(scheduler, output, x0_rep[rows], x_t[rows], t[rows]).to(dtype)
        terms[:, columns.to(x0.device)] = values.reshape(len(columns), num_images).T
    return terms


def _check_images(x0: torch.Tensor) -> None:
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch of images (B, C, H, W), got shape {tuple(x0.shape)}")


def elbo_bpd(
    model_fn: ModelFn,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ELBOOutput:
    """Every term of the negative ELBO of each image, in bits/dim, with one fresh noise draw per timestep.

    The noise of timestep t is the t-th draw of shape x0.shape from `generator`, whatever the batching: the terms
    do not depend on `batch_size`. Each model call sees up to `batch_size` inputs (default: B, i.e. one timestep
    per call); several timesteps share a call when B is smaller, images are split when B is larger.

    Args:
        model_fn (`Callable`): (x_t, t) -> network output, t a (N,) tensor of timestep indices.
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        x0 (`torch.Tensor`): images in [-1, 1], shape (B, C, H, W), B >= 1.
        generator (`torch.Generator`, *optional*): random generator for the noise.
        batch_size (`int`, *optional*): largest number of inputs per model call.
        progress (`Callable`, *optional*): wraps the iterable of timestep chunks, e.g. a progress bar.
    """
    _check_images(x0)
    timesteps = torch.arange(scheduler.config.num_train_timesteps).expand(x0.shape[0], -1)
    terms = _terms_at(model_fn, scheduler, x0, timesteps, generator, batch_size, progress)
    prior = prior_bpd(scheduler, x0).float()
    return ELBOOutput(terms=terms, prior=prior, bits_per_dim=terms.sum(dim=1) + prior)


# ----------------------------------------------------------------------------------------------------------------
# The stratified estimate
@dataclass
class StratifiedELBOOutput(BaseOutput):
    """Stratified estimate of the negative ELBO per image, in bits/dim.

    Args:
        bits_per_dim (`torch.Tensor` of shape (B,)): sum_k n_k L_{t_k} + L_T, an unbiased estimate of the bound.
        terms (`torch.Tensor` of shape (B, K)): L_{t_k}, the term at the timestep drawn in stratum k.
        timesteps (`torch.Tensor` of shape (B, K)): the timestep indices t_k.
        stratum_sizes (`torch.Tensor` of shape (K,)): n_k, the number of timesteps in stratum k.
        prior (`torch.Tensor` of shape (B,)): L_T = KL(q(x_T | x_0) || N(0, I)), exact.
    """

    bits_per_dim: torch.Tensor
    terms: torch.Tensor
    timesteps: torch.Tensor
    stratum_sizes: torch.Tensor
    prior: torch.Tensor


SPACINGS = ("log", "linear")


def stratum_bounds(num_timesteps: int, num_strata: int, spacing: str = "log") -> torch.Tensor:
    """Edges 0 = b_0 < b_1 < ... < b_K = T of K strata covering [0, T).

    Args:
        num_timesteps (`int`): T.
        num_strata (`int`): K, between 1 and T.
        spacing (`str`, defaults to `"log"`): `"linear"`: b_k = floor(k T / K), sizes within one of each other;
            `"log"`: b_k = round(T^{(k-1)/(K-1)}) for 0 < k < K, moved up or down as little as needed to keep every
            stratum non-empty, so that t = 0 is alone (b_1 = 1) and the strata grow geometrically.
    """
    check_choice("spacing", spacing, SPACINGS)
    if not 1 <= num_strata <= num_timesteps:
        raise ValueError(f"num_strata must lie in [1, {num_timesteps}] (the number of timesteps), got {num_strata}")
    if spacing == "linear":
        return torch.arange(num_strata + 1, dtype=torch.int64) * num_timesteps // num_strata
    bounds = [0]
    for k in range(1, num_strata):
        target = round(num_timesteps ** ((k - 1) / (num_strata - 1)))
        bounds.append(min(max(target, bounds[-1] + 1), num_timesteps - (num_strata - k)))
    return torch.tensor([*bounds, num_timesteps], dtype=torch.int64)


def stratified_timesteps(
    num_images: int,
    num_timesteps: int,
    num_strata: int,
    generator: torch.Generator | None = None,
    spacing: str = "log",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep drawn uniformly in each stratum (see `stratum_bounds`), for each image.

    Returns:
        `tuple`: timesteps (num_images, K) int64 and stratum sizes (K,) int64.
    """
    bounds = stratum_bounds(num_timesteps, num_strata, spacing)
    sizes = bounds[1:] - bounds[:-1]
    device = generator.device if generator is not None else None  # a CUDA generator draws on its device
    uniform = torch.rand(num_images, num_strata, generator=generator, device=device, dtype=torch.float64).cpu()
    offsets = (uniform * sizes).floor().long().clamp(max=sizes - 1)  # the clamp guards rand() rounding up to 1
    return bounds[:-1] + offsets, sizes


def stratified_elbo_bpd(
    model_fn: ModelFn,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    num_strata: int,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    spacing: str = "log",
) -> StratifiedELBOOutput:
    """Unbiased estimate of each image's negative ELBO from K stratified timesteps.

    The full bound needs T network calls per image, sum_{t=0}^{T-1} L_t + L_T. Split [0, T) into K strata of sizes
    n_k, draw one timestep t_k uniformly inside each stratum per image, and estimate sum_t L_t by sum_k n_k L_{t_k}:
    each stratum's term has expectation sum_{t in stratum} L_t / n_k, so the estimate is unbiased for any strata,
    costs K calls per image instead of T, and with K = T it is the full sum.

    The strata matter for the variance, not for the mean. The terms fall by five to six orders of magnitude from
    L_0 to L_{T-1}, steepest near t = 0. K equal strata (`spacing="linear"`) put L_0 and the next few large terms
    in a stratum of T/K timesteps, where one draw in T/K hits them with weight T/K. `spacing="log"` (the default)
    gives t = 0 a stratum of its own and lets the others grow geometrically; on a trained digits DDPM (T = 1000,
    K ≈ 50) it lowers the standard deviation of the per-image estimate from 6.8 to 0.25 bits/dim.

    Args:
        model_fn (`Callable`): (x_t, t) -> network output, t a (N,) tensor of timestep indices.
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        x0 (`torch.Tensor`): images in [-1, 1] on the 256-level grid, shape (B, C, H, W).
        num_strata (`int`): K, between 1 and the number of training timesteps T.
        generator (`torch.Generator`, *optional*): a CPU generator for the timesteps, then the noise (one draw of
            x0's shape per stratum, whatever `batch_size`).
        batch_size (`int`, *optional*): largest number of inputs per model call (default: B).
        progress (`Callable`, *optional*): wraps the iterable of stratum chunks, e.g. a progress bar.
        spacing (`str`, defaults to `"log"`): how [0, T) is split, see `stratum_bounds`.
    """
    _check_images(x0)
    timesteps, sizes = stratified_timesteps(
        x0.shape[0], scheduler.config.num_train_timesteps, num_strata, generator=generator, spacing=spacing
    )
    terms = _terms_at(model_fn, scheduler, x0, timesteps, generator, batch_size, progress, dtype=torch.float64)
    prior = prior_bpd(scheduler, x0).double()
    bits_per_dim = (terms * sizes.to(terms)).sum(dim=1) + prior
    return StratifiedELBOOutput(
        bits_per_dim=bits_per_dim, terms=terms, timesteps=timesteps, stratum_sizes=sizes, prior=prior
    )
