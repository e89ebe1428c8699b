"""Reference likelihoods for 8-bit images: the bits/dim of three simple discrete models fitted on a training split,
against which a generative model's bits/dim is read.

- **per-pixel histogram**: each position (channel, row, column) has its own categorical distribution over the 256
  values, p_d(v) = (n_d(v) + alpha) / (N + 256 alpha), where n_d(v) counts the N training images whose pixel d is v;
- **shared histogram**: the pixels are i.i.d. with one categorical distribution of the grey values of all pixels,
  p(v) = (n(v) + alpha) / (N D + 256 alpha), where n(v) counts the value v over all N D training pixels;
- **uniform over the levels used**: every pixel uniform over the L values that occur in the training images or
  the held-out images (so that no held-out pixel gets probability 0), log2(L) bits/dim for every image.

alpha is the additive (Lidstone) smoothing: alpha = 1 is Laplace's add-one rule; it keeps a value never seen at a
position possible. The bits/dim of an image x of D = C H W values is -log2 P(x) / D, computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from ..schedulers.validation import check_positive_float

NUM_VALUES = 256
# train images counted per bincount call: bounds the int64 index tensor (8 bytes per pixel) on large datasets
_COUNT_CHUNK = 1024


@dataclass
class HistogramBaselines(BaseOutput):
    """Per-image bits/dim of the three reference models, on the held-out images.

    Args:
        per_pixel (`torch.Tensor` of shape (B,)): float64 bits/dim under the per-pixel histogram.
        shared (`torch.Tensor` of shape (B,)): float64 bits/dim under the histogram shared by all pixels.
        uniform (`torch.Tensor` of shape (B,)): float64 bits/dim under the uniform distribution over the levels
            used, log2(`num_levels`) for every image.
        smoothing (`float`): alpha, the pseudo-count added to each of the 256 values of both histograms.
        num_levels (`int`): L, the number of values that occur in the training or the held-out images.
    """

    per_pixel: torch.Tensor
    shared: torch.Tensor
    uniform: torch.Tensor
    smoothing: float
    num_levels: int


def _check_images(name: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a uint8 tensor of shape (B, C, H, W), got a {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"{name} must be a uint8 tensor of shape (B, C, H, W), got {images.dtype} of shape {tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError(f"{name} must hold at least one image of at least one pixel, got shape {tuple(images.shape)}")


def _value_counts(images: torch.Tensor) -> torch.Tensor:
    """(D, 256) int64: how many of the images have value v at position d (positions in C, H, W order)."""
    dim = images[0].numel()
    offsets = torch.arange(dim, device=images.device) * NUM_VALUES
    counts = torch.zeros(dim * NUM_VALUES, dtype=torch.int64, device=images.device)
    for chunk in images.flatten(1).split(_COUNT_CHUNK):
        counts += torch.bincount((chunk.long() + offsets).flatten(), minlength=dim * NUM_VALUES)
    return counts.view(dim, NUM_VALUES)


def _bits_per_dim(log_probs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """-log2 P(x) / D of each image, from log-probabilities (D, 256) (one row per position, or one row for all)."""
    flat = images.flatten(1).long()  # (B, D)
    per_position = log_probs.expand(flat.shape[1], NUM_VALUES)
    log_likelihood = per_position.gather(1, flat.T).sum(0)  # (B,) nats: sum over positions of log p_d(x_d)
    return -log_likelihood / (flat.shape[1] * math.log(2.0))


def histogram_baselines(
    train_images: torch.Tensor, held_out_images: torch.Tensor, *, smoothing: float = 0.01
) -> HistogramBaselines:
    """Bits/dim of the held-out images under three reference models fitted on the training images (see the module
    docstring): a per-pixel histogram, one histogram shared by all pixels, and the uniform distribution over the
    values that occur in the training or held-out images.

    Args:
        train_images (`torch.Tensor`): uint8 (N, C, H, W), the images the histograms are counted on.
        held_out_images (`torch.Tensor`): uint8 (B, C, H, W) with the same C, H, W: the images measured.
        smoothing (`float`, defaults to 0.01): alpha > 0, added to the count of each of the 256 values at each
            position (per-pixel) and once to each value (shared); 1 is Laplace's add-one rule.

    Returns:
        `HistogramBaselines`: the (B,) float64 bits/dim of each model, the smoothing and the number of levels.
    """
    _check_images("train_images", train_images)
    _check_images("held_out_images", held_out_images)
    if train_images.shape[1:] != held_out_images.shape[1:]:
        raise ValueError(
            f"train_images and held_out_images must have the same (C, H, W), got {tuple(train_images.shape[1:])} "
            f"and {tuple(held_out_images.shape[1:])}"
        )
    alpha = check_positive_float("smoothing", smoothing)
    held_out_images = held_out_images.to(train_images.device)

    counts = _value_counts(train_images).double()  # (D, 256)
    num_train = len(train_images)
    per_pixel = torch.log(counts + alpha) - math.log(num_train + NUM_VALUES * alpha)
    shared_counts = counts.sum(0, keepdim=True)  # (1, 256): all N D training pixels
    shared = torch.log(shared_counts + alpha) - math.log(num_train * counts.shape[0] + NUM_VALUES * alpha)

    used = shared_counts[0] > 0  # the values of the training images, then those of the held-out images
    used[held_out_images.flatten().unique().long()] = True
    num_levels = int(used.sum())

    return HistogramBaselines(
        per_pixel=_bits_per_dim(per_pixel, held_out_images),
        shared=_bits_per_dim(shared, held_out_images),
        uniform=torch.full((len(held_out_images),), math.log2(num_levels), dtype=torch.float64, device=used.device),
        smoothing=alpha,
        num_levels=num_levels,
    )
