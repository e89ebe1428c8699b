"""Annealed Langevin dynamics (Song & Ermon 2019) as a diffusers scheduler.

Noise levels sigma_0 = sigma_min < ... < sigma_{T-1} = sigma_max are geometric; a larger index is more noise,
as in diffusers. At level t the chain runs L updates x <- x + (eta_t / 2) s(x, sigma_t) + sqrt(eta_t) z with
eta_t = step_size * sigma_t^2 / sigma_min^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .noise_process import VarianceExploding, is_float
from .validation import check_bool, check_choice, check_positive_float, check_positive_int

PREDICTION_TYPES = ("epsilon", "score")
TIME_EMBEDDING_TYPES = ("positional", "fourier", "learned")
# Bounds on what a config may ask for (a config file is untrusted input): far above any published NCSN (NCSNv2
# used up to 2,311 levels and 100 steps per level), far below what would exhaust memory.
MAX_NOISE_LEVELS = 100_000
MAX_LANGEVIN_STEPS = 100_000
MAX_CHAIN_LENGTH = 1_000_000


def _check_chain_length(num_levels: int, num_langevin_steps: int) -> None:
    if num_levels * num_langevin_steps > MAX_CHAIN_LENGTH:
        raise ValueError(
            f"num_langevin_steps={num_langevin_steps} at {num_levels} noise levels makes a chain of "
            f"{num_levels * num_langevin_steps} steps; at most {MAX_CHAIN_LENGTH} are accepted"
        )


@dataclass
class NCSNSchedulerOutput(BaseOutput):
    """Output of `NCSNScheduler.step`.

    Args:
        prev_sample (`torch.Tensor`): the sample after this update, the next input of the loop.
        pred_original_sample (`torch.Tensor`): the Tweedie estimate E[x_0 | x] = x + sigma_t^2 s of the clean
            sample at this level, from the model output (what diffusers' schedulers return as x_0).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def langevin_update(sample: torch.Tensor, score: torch.Tensor, eta: float, noise: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin step x + (eta / 2) s + sqrt(eta) z (two fused multiply-adds)."""
    return sample.add(score, alpha=0.5 * eta).add_(noise, alpha=math.sqrt(eta))


class NCSNScheduler(SchedulerMixin, ConfigMixin):
    """Annealed Langevin dynamics sampler for noise-conditional score networks.

    After `set_timesteps()`, `timesteps` lists the level indices from the noisiest down, each repeated
    `num_langevin_steps` times; with `denoise_final` one extra entry (the last level visited: level 0, unless a
    single level is kept) is appended, and the `step` call that consumes it applies the Tweedie denoise
    x + sigma_t^2 s (sigma_min^2 for the full chain) instead of a Langevin update. A plain
    `for t in scheduler.timesteps: x = scheduler.step(model(x, t), t, x).prev_sample` therefore runs the whole
    chain, starting from `init_noise_sigma * randn`. The scheduler counts its `step` calls to recognise that
    last entry; `set_timesteps` resets the count, and it wraps around after a complete chain.

    `step_size` is eps in eta_t = eps * sigma_t^2 / sigma_min^2 for the update x + (eta_t / 2) s + sqrt(eta_t) z.
    The original NCSN code writes the update as x + alpha s + sqrt(2 alpha) z with alpha = step_lr *
    sigma_t^2 / sigma_min^2, so its step_lr is step_size / 2: the default 4e-5 is its step_lr = 2e-5.

    Args:
        num_train_timesteps (`int`, defaults to 10): number of noise levels T (2 to 100,000).
        sigma_min (`float`, defaults to 0.01): smallest noise level, `sigmas[0]`.
        sigma_max (`float`, defaults to 1.0): largest noise level, `sigmas[-1]` and `init_noise_sigma`.
        num_langevin_steps (`int`, defaults to 100): Langevin updates L per level (at most 100,000, and at most
            1,000,000 updates in the whole chain).
        step_size (`float`, defaults to 4e-5): eps of the step-size rule above.
        denoise_final (`bool`, defaults to `True`): apply the Tweedie denoise after the last level (NCSNv2).
        prediction_type (`str`, defaults to `"epsilon"`): what the model outputs: `"score"` (s itself, e.g. a
            `time_embedding_type="fourier"` UNet2DModel, whose output is divided by sigma) or `"epsilon"`
            (the noise, s = -output / sigma_t).
    """

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 10,
        sigma_min: float = 0.01,
        sigma_max: float = 1.0,
        num_langevin_steps: int = 100,
        step_size: float = 4e-5,
        denoise_final: bool = True,
        prediction_type: str = "epsilon",
    ):
        # values from an untrusted config are bounded before anything is allocated from them
        checked = {
            "num_train_timesteps": check_positive_int(
                "num_train_timesteps", num_train_timesteps, minimum=2, maximum=MAX_NOISE_LEVELS
            ),
            "sigma_min": check_positive_float("sigma_min", sigma_min),
            "sigma_max": check_positive_float("sigma_max", sigma_max),
            "num_langevin_steps": check_positive_int(
                "num_langevin_steps", num_langevin_steps, maximum=MAX_LANGEVIN_STEPS
            ),
            "step_size": check_positive_float("step_size", step_size),
            "denoise_final": check_bool("denoise_final", denoise_final),
        }
        if checked["sigma_min"] >= checked["sigma_max"]:
            raise ValueError(f"sigma_min={sigma_min} must be smaller than sigma_max={sigma_max}")
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_chain_length(checked["num_train_timesteps"], checked["num_langevin_steps"])
        self.register_to_config(**checked)  # NumPy scalars become Python numbers: the config stays JSON
        sigma_min, sigma_max = checked["sigma_min"], checked["sigma_max"]

        log_sigmas = np.linspace(math.log(sigma_min), math.log(sigma_max), num_train_timesteps, dtype=np.float64)
        self.noise_process = VarianceExploding(np.exp(log_sigmas))
        self.sigmas = torch.from_numpy(self.noise_process.sigmas)
        self.init_noise_sigma = float(sigma_max)
        self.set_timesteps()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        num_langevin_steps: int | None = None,
        device: str | torch.device | None = None,
        step_size: float | None = None,
    ) -> None:
        """Lay out the annealed chain.

        Args:
            num_inference_steps (`int`, *optional*): number of noise levels to visit (default: all). A smaller
                number keeps a subset of the trained levels evenly spread in log sigma, always including
                sigma_max, and sigma_min for two or more levels (a single level is sigma_max: annealing must
                start from the noise the chain is initialised with).
            num_langevin_steps (`int`, *optional*): Langevin updates per level (default: the config's).
            device (`str` or `torch.device`, *optional*): where to put `timesteps`.
            step_size (`float`, *optional*): eps for this chain (default: the config's).
        """
        num_train = self.config.num_train_timesteps
        num_levels = num_train if num_inference_steps is None else num_inference_steps
        num_levels = check_positive_int("num_inference_steps", num_levels)
        if num_levels > num_train:
            raise ValueError(
                f"num_inference_steps={num_levels} cannot exceed the {num_train} trained noise levels "
                "(num_train_timesteps)"
            )
        langevin = self.config.num_langevin_steps if num_langevin_steps is None else num_langevin_steps
        self.num_langevin_steps = check_positive_int("num_langevin_steps", langevin, maximum=MAX_LANGEVIN_STEPS)
        _check_chain_length(num_levels, self.num_langevin_steps)
        step_size = self.config.step_size if step_size is None else step_size
        self.step_size = check_positive_float("step_size", step_size)

        # sigmas are geometric, so evenly spaced indices are evenly spaced in log sigma; one level is the noisiest
        if num_levels == 1:
            levels = np.array([num_train - 1])
        else:
            levels = np.linspace(0, num_train - 1, num_levels).round().astype(np.int64)[::-1]
        chain = np.repeat(levels, self.num_langevin_steps)
        if self.config.denoise_final:
            chain = np.append(chain, levels[-1])  # Tweedie at the last level visited
        self.num_inference_steps = num_levels
        self.timesteps = torch.from_numpy(chain).to(device)
        self._step_index = 0

    @property
    def step_index(self) -> int:
        """Position in `timesteps` of the next `step` call."""
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """NCSN feeds x unscaled; kept for the diffusers scheduler interface."""
        return sample

    def model_timestep(self, timestep: float | torch.Tensor, time_embedding_type: str = "positional") -> torch.Tensor:
        """The value to pass to the network as its timestep at level index `timestep`.

        Args:
            timestep (`int`, `float` or `torch.Tensor`): level index, a scalar or one per sample; a float scalar
                is a time of the continuous extension (the probability-flow ODE's), given to the network as a float.
            time_embedding_type (`str`, defaults to `"positional"`): the UNet2DModel's `time_embedding_type`:
                `"positional"`/`"learned"` embed the index; `"fourier"` embeds log sigma and divides its output
                by sigma, so it gets sigma_t.
        """
        check_choice("time_embedding_type", time_embedding_type, TIME_EMBEDDING_TYPES)
        if is_float(timestep) and (not isinstance(timestep, torch.Tensor) or timestep.ndim == 0):
            value = self.marginal(float(timestep))[1] if time_embedding_type == "fourier" else float(timestep)
            device = timestep.device if isinstance(timestep, torch.Tensor) else None
            return torch.tensor(value, dtype=torch.float32, device=device)
        t = torch.as_tensor(timestep, dtype=torch.long)
        if time_embedding_type == "fourier":
            return self.sigmas[t.cpu()].to(device=t.device, dtype=torch.float32)
        return t

    def marginal(
        self, timestep: float | torch.Tensor, like: torch.Tensor | None = None
    ) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(alpha_t, sigma_t) = (1, sigma_t) of x_t = x_0 + sigma_t z at level index `timestep`: integer levels read
        the table (see `noise_process.gather` for the shapes); a fractional scalar level is the continuous
        extension sigma_min (sigma_max / sigma_min)^(t / (T - 1)), as Python floats."""
        return self.noise_process.marginal(timestep, like)

    def score_from_model_output(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The score s(x, sigma_t) implied by the model output under `prediction_type`."""
        return self.noise_process.to_score(model_output, self.config.prediction_type, sample, timestep)

    def sigma_for(self, timestep: int | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
        """sigma_t: a Python float for one level, else a tensor of `like`'s dtype and device shaped (B, 1, ..., 1)
        to broadcast against it (one level per sample)."""
        return self.noise_process.sigma(timestep, like)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """x_t = x_0 + sigma_t * noise, with one level index per sample (or one for all)."""
        return self.noise_process.add_noise(original_samples, noise, timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> NCSNSchedulerOutput | tuple:
        """One Langevin update at level `timestep` (or the final Tweedie denoise, see the class docstring).

        Args:
            model_output (`torch.Tensor`): the network's output at (sample, level).
            timestep (`int`): level index, as listed in `timesteps`.
            sample (`torch.Tensor`): current sample.
            generator (`torch.Generator`, *optional*): random generator for the Langevin noise.
            return_dict (`bool`, defaults to `True`): return an `NCSNSchedulerOutput` instead of a tuple.
        """
        t = int(timestep)
        score = self.score_from_model_output(model_output, t, sample)
        sigma = self.noise_process.sigma(t, sample)
        x0 = self.noise_process.to_sample(score, "score", sample, t)  # Tweedie: x + sigma^2 s
        is_denoise = self.config.denoise_final and self._step_index == len(self.timesteps) - 1
        if is_denoise:
            prev_sample = x0
        else:
            eta = self.step_size * (sigma / self.config.sigma_min) ** 2
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = langevin_update(sample, score, eta, noise).to(sample.dtype)  # a float32 score promotes
        self._step_index = (self._step_index + 1) % len(self.timesteps)
        if not return_dict:
            return prev_sample, x0
        return NCSNSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
