"""DDPM (Ho et al. 2020) read as a hierarchical VAE: a scheduler that exposes the Gaussian posterior
q(x_{t-1} | x_t, x_0) = N(mu~_t(x_t, x_0), beta~_t I) and the model's p(x_{t-1} | x_t) in closed form.

Indices follow diffusers: timestep index t in [0, T) is the lecture's t + 1, so index 0 is the decoder step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .beta_schedules import BETA_SCHEDULES, make_betas
from .noise_process import VariancePreserving, gather, is_float
from .validation import check_bool, check_choice, check_float_in_range, check_positive_float, check_positive_int

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
# Bound on what a config may ask for (a config file is untrusted input): every schedule table is T float64 values.
MAX_TRAIN_TIMESTEPS = 100_000


@dataclass
class DDPMPosteriorSchedulerOutput(BaseOutput):
    """Output of `DDPMPosteriorScheduler.step`.

    Args:
        prev_sample (`torch.Tensor`): x_{t-1}, the next input of the denoising loop.
        pred_original_sample (`torch.Tensor`): the model's estimate of x_0 (after clipping/thresholding).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class PosteriorMeanVariance(NamedTuple):
    """Mean, variance and log-variance of a Gaussian over x_{t-1}, and the x_0 it was built from.

    `variance` and `log_variance` broadcast against the sample: a 0-d tensor (one timestep) or (B, 1, ..., 1) (one
    per sample) for the fixed variance types, the full shape for learned variances.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


def posterior_chain(alphas_cumprod: np.ndarray, betas: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Posterior coefficients, in float64, of the Markov chain through timesteps with the given alpha_bar.

    The chain may be the full training chain or a respaced subset of it (Nichol & Dhariwal 2021, sec. 4):
    each step's beta is recomputed as 1 - alpha_bar_t / alpha_bar_prev so that beta~ stays the true posterior
    variance of the kept steps. The training chain passes its `betas` to keep them exactly as configured.
    """
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    if betas is None:
        betas = 1.0 - alphas_cumprod / alphas_cumprod_prev
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # beta~ is 0 at the first step; the DDPM code clips the log to the next step's value so that the decoder
    # term and learned_range stay finite. A one-step chain has no next step: fall back to log beta.
    first = posterior_variance[1] if len(betas) > 1 else betas[0]
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.append(first, posterior_variance[1:])),
        "large_log_variance": np.log(np.append(first, betas[1:])),
        "log_betas": np.log(betas),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    }


def _as_tensor(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


class DDPMPosteriorScheduler(SchedulerMixin, ConfigMixin):
    """DDPM scheduler that exposes the posterior q(x_{t-1} | x_t, x_0), the model's p(x_{t-1} | x_t) and the
    schedules behind both, all derived in float64.

    The config is diffusers' `DDPMScheduler` config, key for key and with the same meaning, so
    `DDPMPosteriorScheduler.from_config(DDPMScheduler().config)` and the reverse both work. Differences from
    diffusers, all in the math rather than the interface: schedules are float64; the log-variance at t = 0 is
    clipped to log beta~ of the next step (as in the DDPM code) instead of log(1e-20); `fixed_large` uses that
    same value at t = 0; `*_log` variance types are the same distributions as their plain names (no NaN path);
    `learned` reads the model's extra channels as a log-variance (as improved-diffusion does).

    Args:
        num_train_timesteps (`int`, defaults to 1000): number of diffusion steps T (2 to 100,000).
        beta_start (`float`, defaults to 0.0001): first beta of the linear-type schedules.
        beta_end (`float`, defaults to 0.02): last beta of the linear-type schedules.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`,
            `"sigmoid"` or `"laplace"`.
        trained_betas (`list[float]`, *optional*): explicit betas (length T), overriding the schedule.
        variance_type (`str`, defaults to `"fixed_small"`): `"fixed_small"` (beta~_t), `"fixed_large"` (beta_t),
            `"learned"` (model log-variance), `"learned_range"` (log-space interpolation between beta~_t and
            beta_t), or the `*_log` aliases of the fixed types.
        clip_sample (`bool`, defaults to `True`): clip the predicted x_0 to [-clip_sample_range, clip_sample_range].
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` (x_0) or `"v_prediction"`.
        thresholding (`bool`, defaults to `False`): dynamic thresholding of x_0 (Saharia et al. 2022).
        dynamic_thresholding_ratio (`float`, defaults to 0.995): percentile used by thresholding, in (0, 1].
        clip_sample_range (`float`, defaults to 1.0): clipping bound.
        sample_max_value (`float`, defaults to 1.0): largest threshold of dynamic thresholding.
        timestep_spacing (`str`, defaults to `"leading"`): `"linspace"`, `"leading"` or `"trailing"`.
        steps_offset (`int`, defaults to 0): offset added to `"leading"` inference timesteps (below T).
        rescale_betas_zero_snr (`bool`, defaults to `False`): rescale betas to zero terminal SNR.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        # values from an untrusted config are bounded before anything is allocated from them
        checked = {
            "num_train_timesteps": check_positive_int(
                "num_train_timesteps", num_train_timesteps, minimum=2, maximum=MAX_TRAIN_TIMESTEPS
            ),
            "beta_start": check_float_in_range("beta_start", beta_start, -math.inf, math.inf),
            "beta_end": check_float_in_range("beta_end", beta_end, -math.inf, math.inf),
            "clip_sample": check_bool("clip_sample", clip_sample),
            "thresholding": check_bool("thresholding", thresholding),
            "dynamic_thresholding_ratio": check_float_in_range(
                "dynamic_thresholding_ratio", dynamic_thresholding_ratio, 0.0, 1.0, include_low=False
            ),
            "clip_sample_range": check_positive_float("clip_sample_range", clip_sample_range),
            "sample_max_value": check_positive_float("sample_max_value", sample_max_value),
            "steps_offset": check_positive_int(
                "steps_offset", steps_offset, minimum=0, maximum=num_train_timesteps - 1
            ),
            "rescale_betas_zero_snr": check_bool("rescale_betas_zero_snr", rescale_betas_zero_snr),
        }
        num_train_timesteps = checked["num_train_timesteps"]
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        elif len(trained_betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(trained_betas)} values but num_train_timesteps={num_train_timesteps}"
            )
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.register_to_config(**checked)  # NumPy scalars become Python numbers: the config stays JSON

        betas = make_betas(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError(
                f"the betas from beta_start={beta_start}, beta_end={beta_end}, beta_schedule={beta_schedule!r} "
                "must lie in (0, 1]"
            )
        chain = posterior_chain(np.cumprod(1.0 - betas), betas)
        self._train_chain = chain
        self.noise_process = VariancePreserving(chain["alphas_cumprod"])
        self.betas = torch.from_numpy(chain["betas"])
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.from_numpy(chain["alphas_cumprod"])
        self.alphas_cumprod_prev = torch.from_numpy(chain["alphas_cumprod_prev"])
        self.posterior_variance = torch.from_numpy(chain["posterior_variance"])
        self.posterior_log_variance_clipped = torch.from_numpy(chain["posterior_log_variance_clipped"])
        self.posterior_mean_coef1 = torch.from_numpy(chain["posterior_mean_coef1"])
        self.posterior_mean_coef2 = torch.from_numpy(chain["posterior_mean_coef2"])

        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self._set_sampling_chain(np.arange(num_train_timesteps))

    # ----------------------------------------------------------------------------------------------------------
    # Forward process q
    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds x_t to the model unscaled; kept for the diffusers scheduler interface."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q_sample: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, per-sample `timesteps`."""
        return self.noise_process.add_noise(original_samples, noise, timesteps)

    q_sample = add_noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022), the v_prediction target."""
        return self.noise_process.velocity(sample, noise, timesteps)

    def model_timestep(self, timestep: float | torch.Tensor, time_embedding_type: str = "positional") -> torch.Tensor:
        """The value to pass to the network as its timestep: the timestep itself (a fractional scalar is a time of
        the continuous extension, the probability-flow ODE's).

        Args:
            timestep (`int`, `float` or `torch.Tensor`): training timestep, a scalar or one per sample.
            time_embedding_type (`str`, defaults to `"positional"`): the UNet2DModel's `time_embedding_type`,
                `"positional"` or `"learned"` (both embed the timestep; `"fourier"` embeds NCSN's sigma).
        """
        check_choice("time_embedding_type", time_embedding_type, ("positional", "learned"))
        return torch.as_tensor(timestep, dtype=torch.float32 if is_float(timestep) else torch.long)

    def marginal(
        self, timestep: float | torch.Tensor, like: torch.Tensor | None = None
    ) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) of q(x_t | x_0) at training timestep
        `timestep`: integer timesteps read the table (see `noise_process.gather` for the shapes); a fractional
        scalar timestep in [0, T - 1] is the continuous extension (log alpha_bar interpolated), as Python floats."""
        return self.noise_process.marginal(timestep, like)

    def q_mean_variance(self, x0: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        variance = _as_tensor(1.0 - gather(self.noise_process.alphas_cumprod, t, x0), x0)
        return self.noise_process.alpha(t, x0) * x0, variance, variance.log()

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean mu~_t(x_t, x_0), variance beta~_t and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        chain = self._train_chain
        mean = gather(chain["posterior_mean_coef1"], t, x_t) * x0 + gather(chain["posterior_mean_coef2"], t, x_t) * x_t
        variance = _as_tensor(gather(chain["posterior_variance"], t, x_t), x_t)
        log_variance = _as_tensor(gather(chain["posterior_log_variance_clipped"], t, x_t), x_t)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------------------------------------
    # Reverse process p
    def predict_start_from_model_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """x_0 implied by the model output under `prediction_type`, before clipping."""
        return self.noise_process.to_sample(model_output, self.config.prediction_type, x_t, t)

    def score_from_model_output(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The score grad log q_t(x_t) = -eps / sqrt(1 - alpha_bar_t) implied by the model output (its mean part
        for learned variances): a DDPM network is a score model of the noised data."""
        prediction, _ = self._split_variance(model_output, sample)
        return self.noise_process.to_score(prediction, self.config.prediction_type, sample, timestep)

    def _split_variance(self, model_output: torch.Tensor, sample: torch.Tensor):
        learned = self.config.variance_type in ("learned", "learned_range")
        if learned and model_output.shape[1] == 2 * sample.shape[1]:
            return torch.split(model_output, sample.shape[1], dim=1)
        if learned:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs a model output with 2 * {sample.shape[1]} "
                f"channels (mean and variance), got {model_output.shape[1]}"
            )
        return model_output, None

    def _process_x0(self, x0: torch.Tensor) -> torch.Tensor:
        if self.config.thresholding:
            return self._threshold_sample(x0)
        if self.config.clip_sample:
            return x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

    def _threshold_sample(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding: per sample, s = quantile(|x_0|, ratio) clamped to [1, sample_max_value];
        x_0 is clipped to [-s, s] and divided by s."""
        flat = x0.reshape(x0.shape[0], -1)
        work = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
        s = torch.quantile(work.abs(), self.config.dynamic_thresholding_ratio, dim=1, keepdim=True)
        s = s.clamp(min=1.0, max=self.config.sample_max_value)
        return (torch.maximum(torch.minimum(work, s), -s) / s).reshape(x0.shape).to(x0.dtype)

    def _p_mean_log_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t, position, chain: dict, clip_denoised: bool = True
    ):
        """Mean, log-variance (a float for one timestep of a fixed variance type) and x_0 of p(x_prev | x_t)."""
        eps_or_x0, variance_values = self._split_variance(model_output, x_t)
        x0 = self.predict_start_from_model_output(eps_or_x0, x_t, t)
        x0 = self._process_x0(x0) if clip_denoised else x0
        mean = (
            gather(chain["posterior_mean_coef1"], position, x_t) * x0
            + gather(chain["posterior_mean_coef2"], position, x_t) * x_t
        )
        variance_type = self.config.variance_type
        if variance_type in ("fixed_small", "fixed_small_log"):
            log_variance = gather(chain["posterior_log_variance_clipped"], position, x_t)
        elif variance_type in ("fixed_large", "fixed_large_log"):
            log_variance = gather(chain["large_log_variance"], position, x_t)
        elif variance_type == "learned":
            log_variance = variance_values
        else:
            min_log = gather(chain["posterior_log_variance_clipped"], position, x_t)
            max_log = gather(chain["log_betas"], position, x_t)
            frac = (variance_values + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
        return mean, log_variance, x0

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, clip_denoised: bool = True
    ) -> PosteriorMeanVariance:
        """Mean, variance, log-variance of p_theta(x_{t-1} | x_t) on the training chain, and the predicted x_0.

        Args:
            model_output (`torch.Tensor`): the network's output at (x_t, t); 2C channels for learned variances.
            x_t (`torch.Tensor`): the noisy sample.
            t (`int` or `torch.Tensor`): training timestep index, a scalar or one per sample.
            clip_denoised (`bool`, defaults to `True`): apply the config's `clip_sample` / `thresholding` to the
                predicted x_0 (as sampling and the bits/dim evaluation do); training losses pass `False`, since a
                clipped x_0 has no gradient where it saturates.
        """
        mean, log_variance, x0 = self._p_mean_log_variance(
            model_output, x_t, t, t, self._train_chain, clip_denoised=clip_denoised
        )
        log_variance = _as_tensor(log_variance, x_t)
        return PosteriorMeanVariance(mean, log_variance.exp(), log_variance, x0)

    # ----------------------------------------------------------------------------------------------------------
    # Sampling
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the timesteps of the sampling chain, spaced by `timestep_spacing` as in diffusers, and
        recompute the posterior of the kept steps.

        Args:
            num_inference_steps (`int`, *optional*): number of sampling steps (at most `num_train_timesteps`).
            device (`str` or `torch.device`, *optional*): where to put `timesteps`.
            timesteps (`list[int]`, *optional*): explicit descending timesteps instead of `num_inference_steps`.
        """
        num_train = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            steps = np.asarray(timesteps, dtype=np.int64)
            if steps.ndim != 1 or len(steps) == 0 or np.any(np.diff(steps) >= 0):
                raise ValueError(f"timesteps must be a non-empty strictly descending list, got {timesteps!r}")
            self.custom_timesteps, self.num_inference_steps = True, None
        else:
            num_inference_steps = check_positive_int("num_inference_steps", num_inference_steps)
            if num_inference_steps > num_train:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} cannot exceed num_train_timesteps={num_train}"
                )
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                steps = np.linspace(0, num_train - 1, num_inference_steps).round()[::-1].astype(np.int64)
            elif spacing == "leading":
                ratio = num_train // num_inference_steps
                steps = (np.arange(num_inference_steps) * ratio).round()[::-1].astype(np.int64)
                steps = steps + self.config.steps_offset
            else:
                # diffusers' np.arange(T, 0, -T / n) has n + 1 entries for some n (61, 103, ... of 1000) through
                # float rounding; its first n are the right ones
                ratio = num_train / num_inference_steps
                steps = np.round(np.arange(num_train, 0, -ratio)[:num_inference_steps]).astype(np.int64) - 1
            self.custom_timesteps, self.num_inference_steps = False, num_inference_steps
        if steps.min() < 0 or steps.max() >= num_train:
            raise ValueError(f"timesteps must lie in [0, {num_train - 1}], got {steps.tolist()}")

        self._set_sampling_chain(steps[::-1].copy())
        self.timesteps = torch.from_numpy(steps.copy()).to(device)

    def _set_sampling_chain(self, ascending: np.ndarray) -> None:
        if len(ascending) == self.config.num_train_timesteps:
            self._sampling_chain = self._train_chain
        else:
            self._sampling_chain = posterior_chain(self._train_chain["alphas_cumprod"][ascending])
        self._chain_position = {int(t): i for i, t in enumerate(ascending)}

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the sampling chain goes to from `timestep`, as diffusers' `DDPMScheduler` returns it: after
        `set_timesteps`, a 0-d tensor (`tensor(-1)` after the last step); on the training chain, `timestep - 1`."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        position = self._position(timestep)
        return torch.tensor(-1) if position == 0 else self.timesteps[len(self.timesteps) - position]

    def _position(self, timestep: int | torch.Tensor) -> int:
        t = int(timestep)
        if t not in self._chain_position:
            raise ValueError(
                f"timestep={t} is not in the sampling chain; call set_timesteps first or pass one of "
                f"{self.timesteps.tolist()}"
            )
        return self._chain_position[t]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMPosteriorSchedulerOutput | tuple:
        """Ancestral step x_t -> x_{t-1} ~ p_theta(x_{t-1} | x_t) along the sampling chain.

        The noise is drawn exactly as diffusers' `DDPMScheduler.step` draws it (only when t > 0, with
        `randn_tensor` and the caller's generator), so both give the same samples for the same seed, with one
        exception: the last step of a chain whose last timestep is above 0 (`timestep_spacing="trailing"`, or
        `"leading"` with `steps_offset` >= 1). There it returns the mean, which is the predicted x_0 (the chain
        ends at x_0 = mu(x_1), as in the DDPM paper), while diffusers adds N(0, 1 - alpha_bar_t) noise for
        `fixed_large` and `learned_range` (its `fixed_small` variance there is 1e-20). The noise is still drawn,
        so the generator advances as in diffusers.

        Args:
            model_output (`torch.Tensor`): the network's output at (sample, timestep).
            timestep (`int`): current timestep, one of `timesteps`.
            sample (`torch.Tensor`): x_t.
            generator (`torch.Generator`, *optional*): random generator for the noise.
            return_dict (`bool`, defaults to `True`): return a `DDPMPosteriorSchedulerOutput` instead of a tuple.
        """
        t = int(timestep)
        position = self._position(t)
        mean, log_variance, x0 = self._p_mean_log_variance(model_output, sample, t, position, self._sampling_chain)
        prev_sample = mean
        if t > 0:
            noise = randn_tensor(mean.shape, generator=generator, device=sample.device, dtype=model_output.dtype)
            if position > 0:
                std = math.exp(0.5 * log_variance) if isinstance(log_variance, float) else (0.5 * log_variance).exp()
                prev_sample = prev_sample + std * noise
        if not return_dict:
            return prev_sample, x0
        return DDPMPosteriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
