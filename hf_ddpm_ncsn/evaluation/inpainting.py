"""How well a pipeline completes held-out images: the evaluation's digit classifier reads each completed image, and
the fraction recognised as the original's class is set beside a floor (the masked region filled with the training
mean) and a ceiling (the unmasked originals)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .feature_classifier import FeatureClassifier, accuracy


@dataclass(frozen=True)
class InpaintingScore:
    """One row of the inpainting table.

    Args:
        name (`str`): what produced the completions.
        accuracy (`float`): fraction of completed images classified as the original's class.
        network_evaluations (`int`): UNet calls per image (0 for the floor and the ceiling).
        seconds (`float`): wall time of the completions.
    """

    name: str
    accuracy: float
    network_evaluations: int
    seconds: float


def bottom_half_mask(height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W) float mask, 1 (regenerate) on the bottom half of the rows."""
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 2 :, :] = 1
    return mask


def mean_fill(images: torch.Tensor, mask: torch.Tensor, train_images: torch.Tensor) -> torch.Tensor:
    """uint8 `images` with the masked pixels set to the training split's per-pixel mean (rounded): the floor."""
    mean = train_images.double().mean(0, keepdim=True).round().to(torch.uint8)
    return torch.where(mask.bool(), mean, images)


def nearest_neighbour_fill(images: torch.Tensor, mask: torch.Tensor, train_images: torch.Tensor) -> torch.Tensor:
    """uint8 `images` with the masked pixels copied from the training image nearest to each on the known pixels
    (Euclidean): a reference for how much the known pixels say about the rest, without any model."""
    known = ~mask.bool().expand_as(images[:1]).flatten()
    queries, keys = images.flatten(1)[:, known].double(), train_images.flatten(1)[:, known].double()
    nearest = torch.cdist(queries, keys).argmin(dim=1)
    return torch.where(mask.bool(), train_images[nearest], images)


def inpaint_uint8(
    pipe, images: torch.Tensor, mask: torch.Tensor, seed: int = 0, **call_kwargs: Any
) -> tuple[torch.Tensor, float]:
    """Complete uint8 (N, C, H, W) `images` where `mask` is 1 with one pipeline call; returns the completions as
    uint8 and the wall time."""
    start = time.perf_counter()
    out = pipe(
        batch_size=len(images),
        image=images,
        mask_image=mask,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **call_kwargs,
    ).images
    seconds = time.perf_counter() - start
    completed = torch.from_numpy(np.round(out * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    return completed, seconds


def score_inpainting(
    name: str,
    pipe,
    classifier: FeatureClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    seed: int = 0,
    **call_kwargs: Any,
) -> InpaintingScore:
    """Inpaint `images` (uint8) with `pipe` and score the completions with `classifier` (see `InpaintingScore`)."""
    calls = [0]
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    try:
        completed, seconds = inpaint_uint8(pipe, images, mask, seed, **call_kwargs)
    finally:
        hook.remove()
    return InpaintingScore(name, accuracy(classifier, completed, labels), calls[0], seconds)


def format_inpainting_table(rows: list[InpaintingScore]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| completion | classified as the original's class | network evaluations | wall time |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row.name} | {row.accuracy:.1%} | {row.network_evaluations} | {row.seconds:.1f} s |")
    return "\n".join(lines)
