"""Training losses, each a function of (model, scheduler, clean batch).

`model` is any callable (x, timestep) -> output; a diffusers `UNet2DModel` works as is (its `.sample` is read).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from .likelihood import mean_flat, vb_terms_bpd
from .schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from .schedulers.scheduling_ncsn import NCSNScheduler
from .schedulers.validation import check_choice

DDPM_LOSS_TYPES = ("simple", "vlb", "hybrid")


def call_model(model: Callable, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The output tensor of `model(x, timestep)`, unwrapping diffusers' output objects and tuples."""
    out = model(x, timestep)
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def _uniform_timesteps(num: int, batch: int, device, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, num, (batch,), generator=generator, device=gen_device).to(device)


def ncsn_score_matching_loss(
    model: Callable,
    scheduler: NCSNScheduler,
    x0: torch.Tensor,
    time_embedding_type: str = "positional",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoising score matching over noise levels (Song & Ermon 2019):
    E_t E_eps sigma_t^2 ||s(x_0 + sigma_t eps, sigma_t) + eps / sigma_t||^2 with t uniform over the levels,
    averaged over pixels (the lecture's sum divided by the dimension).

    With `prediction_type="epsilon"` (s = -eps_hat / sigma) this is exactly ||eps - eps_hat||^2, DDPM's simple loss.

    Args:
        model (`Callable`): (x, model_timestep) -> output.
        scheduler (`NCSNScheduler`): the noise levels.
        x0 (`torch.Tensor`): clean batch.
        time_embedding_type (`str`, defaults to `"positional"`): what the model expects as its timestep, see
            `NCSNScheduler.model_timestep`.
        generator (`torch.Generator`, *optional*): random generator for levels and noise.
    """
    t = _uniform_timesteps(scheduler.config.num_train_timesteps, x0.shape[0], x0.device, generator)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = scheduler.add_noise(x0, noise, t)
    output = call_model(model, x_t, scheduler.model_timestep(t, time_embedding_type).to(x0.device))
    score = scheduler.score_from_model_output(output, t, x_t)
    sigma = scheduler.sigma_for(t, x0)
    # sigma^2 ||s + eps / sigma||^2 written as ||sigma s + eps||^2, which stays well scaled at small sigma
    return mean_flat((sigma * score + noise) ** 2).mean()


def _simple_target(
    scheduler: DDPMPosteriorScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


def ddpm_loss(
    model: Callable,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    loss_type: str = "simple",
    vlb_weight: float = 0.001,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM training loss with t uniform over the T timesteps.

    - `"simple"`: ||target - output||^2 averaged over pixels (Ho et al. 2020), the target being the noise, x_0 or
      v according to the scheduler's `prediction_type`.
    - `"vlb"`: T * L_t in bits/dim, an unbiased estimate of the bound's sum L_0 + ... + L_{T-1} (the prior L_T
      does not depend on the model).
    - `"hybrid"`: simple + vlb_weight * T * L_t where L_t sees the mean through a stop-gradient, so the bound
      trains only the learned variance (Nichol & Dhariwal 2021, lambda = 0.001).

    Args:
        model (`Callable`): (x_t, t) -> output (2C channels for learned variances).
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        x0 (`torch.Tensor`): clean batch in [-1, 1].
        loss_type (`str`, defaults to `"simple"`): `"simple"`, `"vlb"` or `"hybrid"`.
        vlb_weight (`float`, defaults to 0.001): lambda of the hybrid loss.
        generator (`torch.Generator`, *optional*): random generator for timesteps and noise.
    """
    check_choice("loss_type", loss_type, DDPM_LOSS_TYPES)
    learned_variance = scheduler.config.variance_type in ("learned", "learned_range")
    if loss_type == "simple" and learned_variance:
        raise ValueError(
            f"loss_type='simple' does not train the variance of variance_type={scheduler.config.variance_type!r}; "
            "use loss_type 'hybrid' or 'vlb'"
        )
    num_timesteps = scheduler.config.num_train_timesteps
    t = _uniform_timesteps(num_timesteps, x0.shape[0], x0.device, generator)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = scheduler.add_noise(x0, noise, t)
    output = call_model(model, x_t, t)
    if loss_type == "vlb":
        return (num_timesteps * vb_terms_bpd(scheduler, output, x0, x_t, t, clip_denoised=False)).mean()

    prediction, variance = output.chunk(2, dim=1) if learned_variance else (output, None)
    loss = mean_flat((prediction - _simple_target(scheduler, x0, noise, t)) ** 2)
    if loss_type == "hybrid":
        frozen = torch.cat([prediction.detach(), variance], dim=1) if learned_variance else output.detach()
        loss = loss + vlb_weight * num_timesteps * vb_terms_bpd(scheduler, frozen, x0, x_t, t, clip_denoised=False)
    return loss.mean()
