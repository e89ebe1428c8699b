"""An unbiased estimate of the DDPM negative ELBO from a stratified subset of timesteps.

The full bound needs T network calls per image, sum_{t=0}^{T-1} L_t + L_T. Split [0, T) into K strata of sizes
n_k, draw one timestep t_k uniformly inside each stratum per image, and estimate

    sum_t L_t  ≈  sum_k n_k L_{t_k}:

each stratum's term has expectation sum_{t in stratum} L_t / n_k, so the estimate is unbiased for any strata, costs
K calls per image instead of T, and with K = T it is the full sum.

The strata matter for the variance, not for the mean. The terms fall by five to six orders of magnitude from the
decoder term L_0 to L_{T-1}, steepest near t = 0 (see `elbo_terms.png` of the evaluation). K equal strata
(`spacing="linear"`) put L_0 and the next few large terms in a stratum of T/K timesteps, where one draw in T/K
hits them with weight T/K. `spacing="log"` (the default) gives t = 0 a stratum of its own and lets the others grow
geometrically; on a trained digits DDPM (T = 1000, K ≈ 50) it lowers the standard deviation of the per-image
estimate from 6.8 to 0.25 bits/dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .likelihood import ModelFn, prior_bpd, vb_terms_bpd
from .schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from .schedulers.validation import check_choice


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
    uniform = torch.rand(num_images, num_strata, generator=generator, dtype=torch.float64)
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
    """Unbiased estimate of each image's negative ELBO from K stratified timesteps (see the module docstring).

    Args:
        model_fn (`Callable`): (x_t, t) -> network output, t a (N,) tensor of timestep indices.
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        x0 (`torch.Tensor`): images in [-1, 1] on the 256-level grid, shape (B, C, H, W).
        num_strata (`int`): K, between 1 and the number of training timesteps T.
        generator (`torch.Generator`, *optional*): a CPU generator for the timesteps and the noise.
        batch_size (`int`, *optional*): largest number of inputs per model call (default: B).
        progress (`Callable`, *optional*): wraps the iterable of input chunks, e.g. a progress bar.
        spacing (`str`, defaults to `"log"`): how [0, T) is split, see `stratum_bounds`.
    """
    num_images = x0.shape[0]
    timesteps, sizes = stratified_timesteps(
        num_images, scheduler.config.num_train_timesteps, num_strata, generator=generator, spacing=spacing
    )
    # stratum-major order, as in elbo_bpd: input j is image j % B at its timestep of stratum j // B
    t_flat = timesteps.T.reshape(-1).to(x0.device)
    chunks = list(torch.arange(len(t_flat), device=x0.device).split(batch_size or num_images))
    values = torch.empty(len(t_flat), dtype=torch.float64, device=x0.device)
    for rows in progress(chunks) if progress is not None else chunks:
        x0_rows, t = x0[rows % num_images], t_flat[rows]
        noise = randn_tensor(x0_rows.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = scheduler.add_noise(x0_rows, noise, t)
        with torch.no_grad():
            values[rows] = vb_terms_bpd(scheduler, model_fn(x_t, t), x0_rows, x_t, t).double()
    terms = values.reshape(num_strata, num_images).T
    prior = prior_bpd(scheduler, x0).double()
    bits_per_dim = (terms * sizes.to(terms)).sum(dim=1) + prior
    return StratifiedELBOOutput(
        bits_per_dim=bits_per_dim, terms=terms, timesteps=timesteps, stratum_sizes=sizes, prior=prior
    )
