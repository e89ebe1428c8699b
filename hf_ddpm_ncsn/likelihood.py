"""Likelihood of a DDPM through its ELBO, term by term, in bits per dimension.

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

from .schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from .schedulers.validation import check_positive_int

BIN_HALF_WIDTH = 1.0 / 255.0
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


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


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
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch of images (B, C, H, W), got shape {tuple(x0.shape)}")
    num_images, num_timesteps = x0.shape[0], scheduler.config.num_train_timesteps
    batch_size = num_images if batch_size is None else check_positive_int("batch_size", batch_size)
    chunks = list(torch.arange(num_timesteps, device=x0.device).split(max(1, batch_size // num_images)))
    terms = torch.empty(num_images, num_timesteps, dtype=torch.float32, device=x0.device)
    for chunk in progress(chunks) if progress is not None else chunks:
        noise = torch.cat(
            [randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) for _ in chunk]
        )
        t = chunk.repeat_interleave(num_images)  # timestep-major: input j is image j % B at timestep chunk[j // B]
        x0_rep = x0.repeat(len(chunk), *([1] * (x0.ndim - 1)))
        x_t = scheduler.add_noise(x0_rep, noise, t)
        values = torch.empty(len(t), dtype=torch.float32, device=x0.device)
        for rows in torch.arange(len(t), device=x0.device).split(batch_size):
            with torch.no_grad():
                output = model_fn(x_t[rows], t[rows])
                values[rows] = vb_terms_bpd(scheduler, output, x0_rep[rows], x_t[rows], t[rows]).float()
        terms[:, chunk] = values.reshape(len(chunk), num_images).T
    prior = prior_bpd(scheduler, x0).float()
    return ELBOOutput(terms=terms, prior=prior, bits_per_dim=terms.sum(dim=1) + prior)
