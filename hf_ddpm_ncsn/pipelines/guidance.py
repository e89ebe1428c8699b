"""Class-conditional sampling with classifier-free guidance (Ho & Salimans 2022).

A class-conditional UNet has `num_class_embeds` = K + 1 embeddings: the classes 0..K-1 and, last, the null class K
that training substitutes for the label with probability `--class_dropout_prob`, so one network is both the
conditional model eps(x, t, c) and the unconditional one eps(x, t, null). Guidance with weight w combines them as
eps_u + w (eps_c - eps_u). The same line holds for a score output: s = -eps / sigma is linear in eps, so the score
of the guided eps is s_u + w (s_c - s_u), and NCSN's score outputs are combined by the same formula.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

ClassLabels = int | Sequence[int] | torch.Tensor


def null_class(unet_config) -> int | None:
    """The null-class index of a class-conditional UNet (its last class embedding), or None for an unconditional
    one."""
    num = unet_config.get("num_class_embeds")  # diffusers' configs are dicts
    return None if num is None else num - 1


def check_guidance_scale(guidance_scale: float) -> None:
    """`guidance_scale` must be a finite number >= 1 (1: the conditional model alone)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise ValueError(f"guidance_scale must be a number >= 1, got {type(guidance_scale).__name__}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 1):
        raise ValueError(f"guidance_scale must be a finite number >= 1, got {guidance_scale}")


def prepare_class_labels(
    class_labels: ClassLabels | None, guidance_scale: float, unet_config, batch_size: int, device=None
) -> torch.Tensor | None:
    """Check `class_labels` and `guidance_scale` against the UNet and return one int64 label per sample.

    Args:
        class_labels (`int`, list of `int` or `torch.Tensor`, *optional*): one class for the batch or one per
            sample, each in 0..K-1. Default: the null class K of a conditional UNet (unconditional samples), None
            for an unconditional UNet.
        guidance_scale (`float`): w >= 1.
        unet_config: the UNet's config (`num_class_embeds` = K + 1, or None for an unconditional UNet).
        batch_size (`int`): number of samples.
        device: where the labels go.

    Returns:
        `torch.Tensor` of shape (batch_size,) or None (an unconditional UNet).

    Raises:
        `ValueError`: naming `class_labels` or `guidance_scale`.
    """
    check_guidance_scale(guidance_scale)
    null = null_class(unet_config)
    if null is None:
        if class_labels is not None:
            raise ValueError("class_labels were given but the UNet is unconditional (its num_class_embeds is None)")
        if guidance_scale != 1:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional UNet; this one is not")
        return None
    if class_labels is None:
        if guidance_scale != 1:
            raise ValueError(f"guidance_scale={guidance_scale} needs class_labels: nothing to guide towards")
        return torch.full((batch_size,), null, dtype=torch.long, device=device)
    if isinstance(class_labels, bool):
        raise ValueError("class_labels must be an int, a list of ints or an integer tensor, got bool")
    if isinstance(class_labels, torch.Tensor):
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be an integer tensor, got {class_labels.dtype}")
        labels = class_labels.reshape(-1) if class_labels.ndim == 0 else class_labels
        if labels.ndim != 1:
            raise ValueError(f"class_labels must be a (batch_size,) tensor, got shape {tuple(class_labels.shape)}")
        labels = labels.to(dtype=torch.long)
    else:
        single = isinstance(class_labels, numbers.Integral)
        if not single and not isinstance(class_labels, (list, tuple, range, np.ndarray)):
            raise ValueError(f"class_labels must be an int, a list of ints or an integer tensor, got {class_labels!r}")
        items = [class_labels] if single else list(class_labels)
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, (bool, np.bool_)) for c in items):
            raise ValueError(f"class_labels must be an int, a list of ints or an integer tensor, got {class_labels!r}")
        labels = torch.tensor([int(c) for c in items], dtype=torch.long)
    if len(labels) == 1:
        labels = labels.expand(batch_size)
    if len(labels) != batch_size:
        raise ValueError(
            f"class_labels has {len(labels)} labels but batch_size={batch_size}: give one or one per sample"
        )
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < null):
        raise ValueError(
            f"class_labels must lie in 0..{null - 1} (this UNet has {null} classes), got {labels.tolist()}"
        )
    return labels.to(device)


def guided_output(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor,
    null_label: int,
    guidance_scale: float,
    guided_channels: int | None = None,
) -> torch.Tensor:
    """The classifier-free guided output u + w (c - u) of `model(sample, timestep, labels)`.

    With w = 1 this is the conditional output of one call on the batch alone; otherwise the conditional and the
    null-class inputs go through one call on a doubled batch (the same arithmetic as two calls, half the launches).

    Args:
        model (`Callable`): (sample, timestep, class_labels) -> output (eps, x_0, v or score; any output linear in
            eps combines the same way).
        sample (`torch.Tensor`): (B, C, H, W) inputs.
        timestep (`torch.Tensor`): the model's timestep input (a scalar or (B,)).
        class_labels (`torch.Tensor`): (B,) labels.
        null_label (`int`): the null-class index.
        guidance_scale (`float`): w.
        guided_channels (`int`, *optional*): guide only the first channels (the prediction of a learned-variance
            output) and keep the conditional rest (its variance), as GLIDE does; default: all channels.
    """
    if guidance_scale == 1:
        return model(sample, timestep, class_labels)
    batch = len(sample)
    if timestep.ndim:
        timestep = torch.cat([timestep, timestep])
    labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)])
    conditional, unconditional = model(torch.cat([sample, sample]), timestep, labels).split(batch)
    guided = unconditional + guidance_scale * (conditional - unconditional)
    if guided_channels is None or guided_channels == conditional.shape[1]:
        return guided
    return torch.cat([guided[:, :guided_channels], conditional[:, guided_channels:]], dim=1)
