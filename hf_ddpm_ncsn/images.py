"""The one conversion between 8-bit images and the models' [-1, 1] range (256 bins of half-width 1/255)."""

from __future__ import annotations

import torch

#: half the width of the bin around each of the 256 values v / 127.5 - 1 in [-1, 1]
BIN_HALF_WIDTH = 1.0 / 255.0


def uint8_to_model(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] as `dtype` values in [-1, 1]: x = v / 127.5 - 1, the bin centres."""
    return images.to(dtype) / 127.5 - 1


def model_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] as uint8 images: the nearest of the 256 bin centres, clipped at the ends."""
    return ((images.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def is_on_8bit_grid(x: torch.Tensor, tolerance: float = 1e-3) -> bool:
    """Whether every value of `x` is one of the 256 bin centres v / 127.5 - 1, to `tolerance` of a level (float
    rounding of `uint8_to_model`)."""
    levels = (x.double() + 1) / (2 * BIN_HALF_WIDTH)
    if not torch.isfinite(levels).all():
        return False
    rounded = levels.round()
    return bool((levels - rounded).abs().max() <= tolerance and rounded.min() >= 0 and rounded.max() <= 255)
