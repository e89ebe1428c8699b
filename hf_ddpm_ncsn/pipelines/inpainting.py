"""Inpainting (imputation) with an unconditional score model by replacement: the known pixels of the chain's state
are overwritten, at every step, by a draw of the forward process at the current noise level, so the network only
ever fills in the unknown pixels consistently with them.

- NCSN (Song & Ermon 2019, sec. 5 and their inpainting algorithm in the appendix): at each noise level sigma_t one
  y_t = x_0 + sigma_t z is drawn and imposed on the known pixels before every Langevin step of that level. The paper
  draws y once per level (not per step): within a level the Langevin chain then targets p_sigma(x_u | y_t) for one
  fixed y_t, instead of chasing a moving target.
- DDPM (the replacement rule of Song et al. 2021 and RePaint, Lugmayr et al. 2022): before the step at timestep t,
  the known pixels become a fresh draw of q(x_t | x_0). Optional RePaint resampling (`jump_length`,
  `jump_n_sample`) goes back up the chain by the forward kernel q(x_t | x_{t'}) and denoises again, which gives the
  unknown pixels time to agree with the known ones.

After the chain the known pixels are set to the image itself, so they come back exactly. Replacement is an
approximation of conditional sampling: each step conditions the unknown pixels on a noised copy of the known ones
whose noise is independent of the unknown pixels' history, which widens the conditional spread (see
`tests/test_inpainting.py` for the measured bias on correlated Gaussian data).

Accepted inputs (diffusers' conventions), each either one for the whole batch or one per sample:

- `image`: a PIL image (converted to "L" or "RGB" for the UNet's channels) or a list of them; a NumPy array
  (H, W), (H, W, C) or (B, H, W, C), uint8 in [0, 255] or float in [0, 1]; a torch tensor (C, H, W) or
  (B, C, H, W), float in [-1, 1] (the model's range) or uint8 in [0, 255].
- `mask_image` (white = regenerate): a PIL image of mode "L" (values 0 or 255) or "1", or a list of them; a NumPy
  array or torch tensor (H, W) or (B, 1, H, W) of 0 and 1 (bool, integer or float).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..images import uint8_to_model
from ..schedulers.validation import check_positive_int

#: a model call as the loops make it: (sample, scheduler timestep) -> the network's output
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: called after each network step with (step index, timestep, sample); returns the sample to continue from
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

_IMAGE_FORMS = (
    "a PIL image or a list of them, a NumPy array (H, W), (H, W, C) or (B, H, W, C) (uint8 in [0, 255] or float in "
    "[0, 1]), or a torch tensor (C, H, W) or (B, C, H, W) (float in [-1, 1] or uint8 in [0, 255])"
)
_MASK_FORMS = (
    "a PIL image of mode 'L' (0 or 255) or '1', a list of them, or a NumPy array / torch tensor (H, W) or "
    "(B, 1, H, W) of 0 and 1"
)


@dataclass(frozen=True)
class KnownPixels:
    """The image to inpaint and where it is known, shaped for the batch.

    Args:
        image (`torch.Tensor`): (B, C, H, W) in [-1, 1], the model's range: x_0 on the known pixels.
        image_01 (`torch.Tensor`): (B, C, H, W) float32 in [0, 1], the image as the output types carry it, taken
            from the input as given so that the known pixels of the output are the input's to the bit.
        regenerate (`torch.Tensor`): (B, 1, H, W) bool, True where pixels are generated (white in the mask).
    """

    image: torch.Tensor
    image_01: torch.Tensor
    regenerate: torch.Tensor

    def paste(self, sample: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """`sample` on the pixels to regenerate, `known` elsewhere."""
        return torch.where(self.regenerate, sample, known)


def _batch_count(name: str, count: int, batch_size: int) -> None:
    if count not in (1, batch_size):
        raise ValueError(
            f"{name} holds {count} images but batch_size={batch_size}: pass one {name} for the whole batch or "
            f"exactly batch_size of them (or set batch_size={count})"
        )


def _pil_list(name: str, value: Any) -> list[PIL.Image.Image] | None:
    if isinstance(value, PIL.Image.Image):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, PIL.Image.Image) for v in value):
        if len({v.size for v in value}) > 1:
            raise ValueError(f"{name} is a list of PIL images of different sizes {sorted({v.size for v in value})}")
        return list(value)
    return None


def image_to_tensors(image: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) in [-1, 1] and in [0, 1] (float32) from any accepted form, without checking the size."""
    pils = _pil_list("image", image)
    if pils is not None:
        mode = "L" if channels == 1 else "RGB"
        image = np.stack([np.asarray(p.convert(mode), dtype=np.uint8).reshape(p.height, p.width, -1) for p in pils])
    if isinstance(image, np.ndarray):
        # NumPy images are channels-last, as in diffusers' image processor
        if image.ndim == 2:
            image = image[None, :, :, None]
        elif image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"image must be {_IMAGE_FORMS}; got a NumPy array of shape {image.shape}")
        array = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2)
        if array.dtype == torch.uint8:
            return uint8_to_model(array), array.float() / 255
        if not torch.is_floating_point(array):
            raise ValueError(f"image must be {_IMAGE_FORMS}; got a NumPy array of dtype {image.dtype}")
        array = array.float()
        _check_range(array, 0.0, 1.0, "a float NumPy image")
        return array * 2 - 1, array
    if isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4:
            raise ValueError(f"image must be {_IMAGE_FORMS}; got a tensor of shape {tuple(image.shape)}")
        if tensor.dtype == torch.uint8:
            return uint8_to_model(tensor), tensor.float() / 255
        if not torch.is_floating_point(tensor):
            raise ValueError(f"image must be {_IMAGE_FORMS}; got a tensor of dtype {tensor.dtype}")
        _check_range(tensor, -1.0, 1.0, "a float tensor image")
        # the same arithmetic as the pipelines' output conversion, so known pixels come back bit for bit
        return tensor, (tensor.float() / 2 + 0.5).clamp(0, 1)
    raise ValueError(f"image must be {_IMAGE_FORMS}; got {type(image).__name__}")


def _check_range(values: torch.Tensor, low: float, high: float, what: str) -> None:
    if not torch.isfinite(values).all() or values.min() < low or values.max() > high:
        raise ValueError(f"image as {what} must have finite values in [{low:g}, {high:g}]")


def _mask_to_tensor(mask_image: Any) -> torch.Tensor:
    """(B, 1, H, W) bool, True = regenerate, from any accepted form, without checking the size."""
    pils = _pil_list("mask_image", mask_image)
    if pils is not None:
        if any(p.mode not in ("L", "1") for p in pils):
            modes = sorted({p.mode for p in pils})
            raise ValueError(f"mask_image must be a single-channel image (mode 'L' or '1'), got mode {modes}")
        values = np.stack([np.asarray(p.convert("L"), dtype=np.uint8) for p in pils])[:, None]
        if not np.isin(values, (0, 255)).all():
            raise ValueError(
                "mask_image must be binary: 0 (black, keep) or 255 (white, regenerate); got other grey levels"
            )
        return torch.from_numpy(values == 255)
    if isinstance(mask_image, np.ndarray):
        mask_image = torch.from_numpy(np.ascontiguousarray(mask_image))
    if not isinstance(mask_image, torch.Tensor):
        raise ValueError(f"mask_image must be {_MASK_FORMS}; got {type(mask_image).__name__}")
    mask = mask_image[None, None] if mask_image.ndim == 2 else mask_image
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"mask_image must be {_MASK_FORMS} (one channel, applied to every image channel); got shape "
            f"{tuple(mask_image.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask.cpu()
    if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask_image must be binary: 0 (keep) or 1 (regenerate); got other values")
    return (mask == 1).cpu()


def prepare_known_pixels(
    image: Any,
    mask_image: Any,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> KnownPixels | None:
    """Check and convert `image` and `mask_image` (see the module docstring for the accepted forms) into
    `KnownPixels` for a batch of `batch_size` images of the UNet's `channels`, `height` and `width`; None when
    neither is given (unconditional sampling).

    Raises:
        `ValueError`: naming the argument and what it accepts: only one of the two given, a wrong form, dtype, range,
        size, channel count or batch count, or a mask that is not binary.
    """
    if image is None and mask_image is None:
        return None
    if image is None or mask_image is None:
        given, missing = ("image", "mask_image") if mask_image is None else ("mask_image", "image")
        raise ValueError(f"{given} was given without {missing}: inpainting needs both (mask_image white = regenerate)")
    x0, x0_01 = image_to_tensors(image, channels)
    regenerate = _mask_to_tensor(mask_image)
    if x0.shape[1] != channels:
        raise ValueError(f"image has {x0.shape[1]} channels but the UNet takes {channels}")
    for name, tensor in (("image", x0), ("mask_image", regenerate)):
        if tuple(tensor.shape[-2:]) != (height, width):
            raise ValueError(
                f"{name} is {tensor.shape[-2]}x{tensor.shape[-1]} (height x width) but the UNet samples "
                f"{height}x{width}"
            )
        _batch_count(name, tensor.shape[0], batch_size)
    shape = (batch_size, channels, height, width)
    return KnownPixels(
        image=x0.to(device=device, dtype=dtype).expand(shape).contiguous(),
        image_01=x0_01.to(device=device).expand(shape).contiguous(),
        regenerate=regenerate.to(device=device).expand(batch_size, 1, height, width).contiguous(),
    )


def check_resampling(jump_length: int, jump_n_sample: int) -> None:
    """RePaint's arguments: `jump_length` >= 1 steps back per jump, `jump_n_sample` >= 1 passes over each stretch
    (1 = no resampling)."""
    check_positive_int("jump_length", jump_length)
    check_positive_int("jump_n_sample", jump_n_sample)


# --------------------------------------------------------------------------------------------------------------
# The resampling schedule
DENOISE, RENOISE = "denoise", "renoise"


def resampling_schedule(num_steps: int, jump_length: int = 1, jump_n_sample: int = 1) -> list[tuple[str, int]]:
    """RePaint's walk over a chain of `num_steps` steps, as (action, position) pairs.

    Position p is the index in the scheduler's (descending) `timesteps`. ("denoise", p) is the network's step from
    timesteps[p] to the next; ("renoise", p) goes back up from the state after ("denoise", p) to timesteps[p] by the
    forward kernel. Counting the steps still to go r = num_steps - 1 - p, the walk jumps back `jump_length` steps each
    time it has reached r = 0, jump_length, 2 jump_length, ... (with r + jump_length < num_steps, so the jump stays
    in the chain; never from the final x_0), `jump_n_sample - 1` times at each such point. So the network is called
    num_steps + (ceil(num_steps / jump_length) - 1) (jump_n_sample - 1) jump_length times (tested).
    """
    check_positive_int("num_steps", num_steps)
    check_resampling(jump_length, jump_n_sample)
    jumps_left = {r: jump_n_sample - 1 for r in range(0, num_steps - jump_length, jump_length)}
    walk: list[tuple[str, int]] = []
    p = 0
    while p < num_steps:
        walk.append((DENOISE, p))
        p += 1
        steps_to_go = num_steps - 1 - p  # RePaint's label of the state just reached (-1: the final x_0)
        if jumps_left.get(steps_to_go, 0) > 0:
            jumps_left[steps_to_go] -= 1
            for _ in range(jump_length):
                p -= 1
                walk.append((RENOISE, p))
    return walk


def _no_progress_bar(iterable: Iterable) -> Iterable:
    return iterable


def _known_noise(known: KnownPixels, generator) -> torch.Tensor:
    return randn_tensor(known.image.shape, generator=generator, device=known.image.device, dtype=known.image.dtype)


# --------------------------------------------------------------------------------------------------------------
# Reconstruction guidance
def check_reconstruction_guidance(scale: float, image: Any) -> float:
    """`reconstruction_guidance_scale`: a finite w >= 0 (0 = plain replacement), and only with an `image`."""
    if (
        isinstance(scale, bool | np.bool_)
        or not isinstance(scale, numbers.Real)
        or not math.isfinite(scale)
        or scale < 0
    ):
        raise ValueError(f"reconstruction_guidance_scale must be a finite number >= 0 (0 = off), got {scale!r}")
    if scale > 0 and image is None:
        raise ValueError(f"reconstruction_guidance_scale={scale!r} steers inpainting: it needs image= and mask_image=")
    return float(scale)


def reconstruction_guided(model_fn: ModelFn, scheduler, known: KnownPixels, scale: float) -> ModelFn:
    """The model with its score moved towards the known pixels: s(x_t) + w grad log p~(y | x_t), where p~(y | x_t)
    = N(y; x0_hat(x_t), r_t^2 I) on the known pixels, x0_hat is Tweedie's estimate from the model and
    r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2) the posterior variance of x_0 for unit-variance data (Ho et al.
    2022's reconstruction guidance with the weight of Song et al. 2023, PiGDM). The gradient, J^T (y - x0_hat) / r_t^2
    with J = d x0_hat / d x_t, goes back through the network, which costs about two more forward passes per step.

    Replacement alone conditions the unknown pixels only through a noised copy of the known ones; the gradient tells
    them how to change so that the model's own estimate of x_0 agrees with the known pixels.

    Args:
        model_fn (`Callable`): (sample, timestep) -> the network's output, as the scheduler's `step` takes it (for
            learned variances the mean part comes first; the variance part is passed through).
        scheduler (`NCSNScheduler` or `DDPMPosteriorScheduler`): its `noise_process` and `prediction_type` convert.
        known (`KnownPixels`): the image and mask.
        scale (`float`): w > 0.
    """
    process, prediction_type = scheduler.noise_process, scheduler.config.prediction_type
    channels = known.image.shape[1]

    def guided(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = sample.detach().requires_grad_(True)
            output = model_fn(x, timestep)
            score = process.to_score(output[:, :channels], prediction_type, x, timestep)
            alpha, sigma = process.marginal(timestep, x)
            residual = known.paste(torch.zeros_like(x), known.image - (x + sigma**2 * score) / alpha)
            r2 = sigma**2 / (alpha**2 + sigma**2)
            # in float32 at least: 1 / r_t^2 reaches 1e5 and more at the lowest levels, past half precision's range
            residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
            (grad,) = torch.autograd.grad(residual.square().sum() / (-2.0 * r2), x)
        steered = score.detach() + scale * grad
        mean = process.from_score(steered, prediction_type, sample, timestep)
        return torch.cat([mean, output[:, channels:].detach()], dim=1)

    return guided


# --------------------------------------------------------------------------------------------------------------
# The sampling loops
def ncsn_inpainting_loop(
    model_fn: ModelFn,
    scheduler,
    sample: torch.Tensor,
    known: KnownPixels,
    generator=None,
    progress_bar: Callable[[Iterable], Iterable] = _no_progress_bar,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics over `scheduler.timesteps` (after `set_timesteps`) with the known pixels replaced
    by y_t = x_0 + sigma_t z, one z per noise level, before every step of that level (the final Tweedie denoise,
    if any, sees level 0's y); then the known pixels are set to x_0.

    Args:
        model_fn (`Callable`): (sample, timestep) -> the network's output, as the scheduler's `step` takes it.
        scheduler (`NCSNScheduler`): with its chain laid out.
        sample (`torch.Tensor`): the initial noise, (B, C, H, W).
        known (`KnownPixels`): the image and mask (`prepare_known_pixels`).
        generator (`torch.Generator` or a list of them, *optional*): draws y's noise and the Langevin noise.
        progress_bar (`Callable`, *optional*): wraps the iterable of steps (the pipeline's `progress_bar`).
        callback (`Callable`, *optional*): (step index, timestep, sample) -> sample, after each step.
    """
    level, noised_known = None, None
    for i, t in enumerate(progress_bar(scheduler.timesteps)):
        if int(t) != level:
            level = int(t)
            noised_known = scheduler.add_noise(known.image, _known_noise(known, generator), level)
        sample = known.paste(sample, noised_known)
        sample = scheduler.step(model_fn(sample, t), t, sample, generator=generator).prev_sample
        if callback is not None:
            sample = callback(i, t, sample)
    return known.paste(sample, known.image)


def forward_jump(scheduler, sample: torch.Tensor, start: int, end: int, generator=None) -> torch.Tensor:
    """A draw of q(x_end | x_start) = N(sqrt(abar_end / abar_start) x_start, (1 - abar_end / abar_start) I) of the
    variance-preserving process, end > start: RePaint's way back up the chain."""
    ratio = float(scheduler.alphas_cumprod[end] / scheduler.alphas_cumprod[start])
    noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    return sample * math.sqrt(ratio) + noise * math.sqrt(1.0 - ratio)


def ddpm_inpainting_loop(
    model_fn: ModelFn,
    scheduler,
    sample: torch.Tensor,
    known: KnownPixels,
    generator=None,
    jump_length: int = 1,
    jump_n_sample: int = 1,
    progress_bar: Callable[[Iterable], Iterable] = _no_progress_bar,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over `scheduler.timesteps` (after `set_timesteps`) with the known pixels replaced by a
    fresh draw of q(x_t | x_0) before the step at each timestep t, along RePaint's walk (`resampling_schedule`;
    `jump_n_sample=1` is plain replacement); then the known pixels are set to x_0.

    Args:
        model_fn (`Callable`): (sample, timestep) -> the network's output, as the scheduler's `step` takes it.
        scheduler (`DDPMPosteriorScheduler`): with its chain laid out.
        sample (`torch.Tensor`): the initial noise x_T, (B, C, H, W).
        known (`KnownPixels`): the image and mask (`prepare_known_pixels`).
        generator (`torch.Generator` or a list of them, *optional*): draws every noise of the walk.
        jump_length (`int`, defaults to 1), jump_n_sample (`int`, defaults to 1): RePaint's resampling.
        progress_bar (`Callable`, *optional*): wraps the iterable of the walk's moves (steps and jumps).
        callback (`Callable`, *optional*): (network step index, timestep, sample) -> sample, after each step.
    """
    timesteps = scheduler.timesteps
    walk = resampling_schedule(len(timesteps), jump_length, jump_n_sample)
    num_calls = 0
    for action, p in progress_bar(walk):
        t = timesteps[p]
        if action == RENOISE:
            sample = forward_jump(scheduler, sample, int(timesteps[p + 1]), int(t), generator)
            continue
        sample = known.paste(sample, scheduler.add_noise(known.image, _known_noise(known, generator), t))
        sample = scheduler.step(model_fn(sample, t), t, sample, generator=generator).prev_sample
        if callback is not None:
            sample = callback(num_calls, t, sample)
        num_calls += 1
    return known.paste(sample, known.image)
