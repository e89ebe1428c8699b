"""Stochastic samplers on a descending list of integer levels of a noise process.

Predictor-corrector (Song et al. 2021, Alg. 2 for VE, Alg. 3 for VP). At each level t, from the noisiest:

- corrector: `num_corrector_steps` Langevin updates x <- x + e s + sqrt(2 e) z whose step e = 2 a (snr ||z|| /
  ||s||)^2 sets the ratio of the update's signal to its noise (a = alpha_t^2 / alpha_{t-1}^2, one training
  step's 1 - beta_t, is 1 under VE);
- predictor: reverse diffusion to the next level t'. The forward kernel between them is x_t = k x_t' + b z with
  k = alpha_t / alpha_t' and b^2 = sigma_t^2 - k^2 sigma_t'^2, and its reverse-time discretisation is
  x_t' = (2 - k) x_t + b^2 s + b z (VE: x + (sigma_t^2 - sigma_t'^2) s + b z; VP: Alg. 3's (2 - sqrt(1 - beta)) x
  + beta s + sqrt(beta) z);
- after the last level, Tweedie's denoise (x + sigma_t^2 s) / alpha_t instead of a predictor (Song et al.'s
  noise removal).

As in Song et al.'s code, ||z|| and ||s|| are each sample's norms averaged over the batch: one step for the batch.
A step from each sample's own norms is biased at small D, because it is then correlated with the sample (1 /
||x||^2): with the exact score of Gaussian data in D = 64 dimensions it inflates the output variance by 5-9%,
against 0.3-2% for the batch's step (tests/test_sampling.py). A sample's step therefore depends on its batch.

Annealed Langevin dynamics (Song & Ermon 2019): at each level `num_steps` updates x <- x + (eta / 2) s + sqrt(eta)
z with eta = step_size sigma_t^2 / sigma_min^2 (sigma_min: the last level's), then the same Tweedie denoise; with
a DDPM eps model's score s = -eps / sigma_t this samples a DDPM the way NCSN is sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..schedulers.noise_process import NoiseProcess
from ..schedulers.scheduling_ncsn import langevin_update

#: (x, t) -> the score grad log q_t(x) at scheduler time t (an int level, or a float time of the ODE).
ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]
Generator = torch.Generator | list[torch.Generator] | None


def _noise(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _mean_norm(x: torch.Tensor) -> float:
    """The samples' norms ||x_i||, averaged over the batch."""
    return x.reshape(len(x), -1).norm(dim=1).mean().item()


def tweedie_denoise(process: NoiseProcess, x: torch.Tensor, t: int, score: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + sigma_t^2 s) / alpha_t."""
    return process.to_sample(score, "score", x, t)


def langevin_corrector_step(
    process: NoiseProcess, x: torch.Tensor, t: int, score: torch.Tensor, snr: float, generator: Generator
) -> torch.Tensor:
    """One Langevin update at level t with the step that gives signal-to-noise ratio `snr` (Alg. 2 / 3)."""
    alpha_prev = process.alphas[t - 1] if t > 0 else 1.0
    one_minus_beta = float(process.alphas[t] / alpha_prev) ** 2
    z = _noise(x, generator)
    # a zero score (every sample exactly at the mode) would divide by zero: the step is then the largest finite one
    ratio = _mean_norm(z) / max(_mean_norm(score), torch.finfo(x.dtype).tiny)
    step = 2.0 * one_minus_beta * (snr * ratio) ** 2
    return x.add(score, alpha=step).add_(z, alpha=math.sqrt(2.0 * step))


def reverse_diffusion_predictor_step(
    process: NoiseProcess, x: torch.Tensor, t: int, t_next: int, score: torch.Tensor, generator: Generator
) -> torch.Tensor:
    """x_t -> x_t' by the reverse-time discretisation of the forward kernel between the two levels."""
    alpha, sigma = process.marginal(t)
    alpha_next, sigma_next = process.marginal(t_next)
    k = alpha / alpha_next
    b2 = sigma**2 - k**2 * sigma_next**2
    return x.mul(2.0 - k).add_(score, alpha=b2).add_(_noise(x, generator), alpha=math.sqrt(b2))


def predictor_corrector_sample(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    levels: Sequence[int],
    *,
    snr: float,
    num_corrector_steps: int,
    generator: Generator = None,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Run the predictor-corrector sampler from x (a draw of the prior at levels[0]) down the strictly descending
    integer `levels` and return the denoised samples: len(levels) * (num_corrector_steps + 1) score evaluations.

    Args:
        score_fn (`ScoreFn`): the model's score.
        process (`NoiseProcess`): the scheduler's noise process.
        x (`torch.Tensor`): initial samples at the noisiest level.
        levels (`Sequence[int]`): the levels to visit, noisiest first.
        snr (`float`): signal-to-noise ratio of the corrector (Song et al. use 0.16 on CIFAR-10 for VE).
        num_corrector_steps (`int`): Langevin updates per level (0: the predictor alone).
        generator (`torch.Generator` or a list of them, *optional*): draws every noise.
        progress (`Callable`, *optional*): `progress(iterable)` wraps the levels (e.g. a pipeline's progress bar).
    """
    levels = [int(t) for t in levels]
    for i, t in enumerate(progress(levels) if progress is not None else levels):
        for _ in range(num_corrector_steps):
            x = langevin_corrector_step(process, x, t, score_fn(x, t), snr, generator)
        score = score_fn(x, t)
        if i == len(levels) - 1:
            return tweedie_denoise(process, x, t, score)
        x = reverse_diffusion_predictor_step(process, x, t, levels[i + 1], score, generator)
    raise ValueError("levels must not be empty")


def annealed_langevin_sample(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    levels: Sequence[int],
    *,
    num_steps: int,
    step_size: float,
    generator: Generator = None,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics down the descending `levels`, then Tweedie's denoise at the last one:
    len(levels) * num_steps + 1 score evaluations (NCSNScheduler's chain, for any noise process).

    Args:
        score_fn, process, x, levels, generator, progress: as for `predictor_corrector_sample`.
        num_steps (`int`): Langevin updates per level.
        step_size (`float`): eps of eta_t = eps sigma_t^2 / sigma_min^2.
    """
    levels = [int(t) for t in levels]
    if not levels:
        raise ValueError("levels must not be empty")
    sigma_min = process.marginal(levels[-1])[1]
    for t in progress(levels) if progress is not None else levels:
        eta = step_size * (process.marginal(t)[1] / sigma_min) ** 2
        for _ in range(num_steps):
            x = langevin_update(x, score_fn(x, t), eta, _noise(x, generator))
    return tweedie_denoise(process, x, levels[-1], score_fn(x, levels[-1]))
