"""Training losses of both families: per-sample terms, then their reduction.

Each `*_terms` function returns a `LossTerms`: the per-sample loss (B,) and its named parts (B,) each (the hybrid
loss's mean-squared error and bound term separately), so training can log the parts; the `*_loss` functions are
their batch means. `model` is any callable (x, timestep) -> output; a diffusers `UNet2DModel` works as is (its
`.sample` is read). Both denoising losses are one formula, `noise_process.denoising_mse`, in the prediction's own
target: NCSN's sigma_t^2 ||s + eps / sigma_t||^2 is the eps-space error ||eps_hat - eps||^2 of eps_hat = -sigma_t s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor

from .likelihood import vb_terms_bpd
from .schedulers.noise_process import denoising_mse
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


@dataclass
class LossTerms:
    """A training loss per sample and its named parts.

    Args:
        loss (`torch.Tensor` of shape (B,)): the per-sample loss that training minimises (its mean).
        parts (`dict[str, torch.Tensor]`): named per-sample parts, each (B,), for logging.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def mean(self) -> torch.Tensor:
        """The batch loss: the mean of the per-sample losses."""
        return self.loss.mean()

    def weighted(self, weights: torch.Tensor) -> LossTerms:
        """The terms of an importance-sampled batch: the loss and every part times each sample's weight 1 / (T p_t),
        so that each batch mean stays an unbiased estimate of its mean over uniformly drawn timesteps.

        Args:
            weights (`torch.Tensor` of shape (B,)): the weight of each sample.
        """
        weights = weights.to(device=self.loss.device, dtype=self.loss.dtype)
        return LossTerms(self.loss * weights, {name: part * weights for name, part in self.parts.items()})


def _uniform_timesteps(num: int, batch: int, device, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, num, (batch,), generator=generator, device=gen_device).to(device)


def ncsn_score_matching_terms(
    model: Callable,
    scheduler: NCSNScheduler,
    x0: torch.Tensor,
    time_embedding_type: str = "positional",
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Denoising score matching over noise levels (Song & Ermon 2019) per sample:
    sigma_t^2 ||s(x_0 + sigma_t eps, sigma_t) + eps / sigma_t||^2 with t uniform over the levels, averaged over
    pixels (the lecture's sum divided by the dimension). Part: `"denoising_score_matching"`.

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
    process = scheduler.noise_process
    x_t = process.add_noise(x0, noise, t)
    output = call_model(model, x_t, scheduler.model_timestep(t, time_embedding_type).to(x0.device))
    # in eps space (sigma s + eps, not s + eps / sigma), which stays well scaled at small sigma
    loss = denoising_mse(process.to_epsilon(output, scheduler.config.prediction_type, x_t, t), noise)
    return LossTerms(loss, {"denoising_score_matching": loss})


def ncsn_score_matching_loss(
    model: Callable,
    scheduler: NCSNScheduler,
    x0: torch.Tensor,
    time_embedding_type: str = "positional",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The batch mean of `ncsn_score_matching_terms` (same arguments)."""
    return ncsn_score_matching_terms(model, scheduler, x0, time_embedding_type, generator).mean()


def ddpm_loss_terms(
    model: Callable,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    loss_type: str = "simple",
    vlb_weight: float = 0.001,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
) -> LossTerms:
    """DDPM training loss per sample with t uniform over the T timesteps (or the given `timesteps`); parts `"mse"`
    and/or `"vlb"` (the unweighted T * L_t).

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
        timesteps (`torch.Tensor` of shape (B,), *optional*): the batch's timesteps, e.g. from an importance
            sampler (`training.timestep_sampling`); default: uniform draws. The loss is not weighted here.
    """
    check_choice("loss_type", loss_type, DDPM_LOSS_TYPES)
    learned_variance = scheduler.config.variance_type in ("learned", "learned_range")
    if loss_type == "simple" and learned_variance:
        raise ValueError(
            f"loss_type='simple' does not train the variance of variance_type={scheduler.config.variance_type!r}; "
            "use loss_type 'hybrid' or 'vlb'"
        )
    num_timesteps = scheduler.config.num_train_timesteps
    if timesteps is None:
        t = _uniform_timesteps(num_timesteps, x0.shape[0], x0.device, generator)
    elif timesteps.shape != (x0.shape[0],) or timesteps.dtype != torch.int64:
        raise ValueError(
            f"timesteps must be an int64 tensor of shape ({x0.shape[0]},), got {timesteps.dtype} of "
            f"shape {tuple(timesteps.shape)}"
        )
    else:
        t = timesteps.to(x0.device)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    process = scheduler.noise_process
    x_t = process.add_noise(x0, noise, t)
    output = call_model(model, x_t, t)
    if loss_type == "vlb":
        vlb = num_timesteps * vb_terms_bpd(scheduler, output, x0, x_t, t, clip_denoised=False)
        return LossTerms(vlb, {"vlb": vlb})

    prediction, variance = output.chunk(2, dim=1) if learned_variance else (output, None)
    mse = denoising_mse(prediction, process.target(scheduler.config.prediction_type, x0, noise, t))
    if loss_type == "simple":
        return LossTerms(mse, {"mse": mse})
    frozen = torch.cat([prediction.detach(), variance], dim=1) if learned_variance else output.detach()
    vlb = num_timesteps * vb_terms_bpd(scheduler, frozen, x0, x_t, t, clip_denoised=False)
    return LossTerms(mse + vlb_weight * vlb, {"mse": mse, "vlb": vlb})


def ddpm_loss(
    model: Callable,
    scheduler: DDPMPosteriorScheduler,
    x0: torch.Tensor,
    loss_type: str = "simple",
    vlb_weight: float = 0.001,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The batch mean of `ddpm_loss_terms` (same arguments)."""
    return ddpm_loss_terms(model, scheduler, x0, loss_type, vlb_weight, generator, timesteps).mean()
