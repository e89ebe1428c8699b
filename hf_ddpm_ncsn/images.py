"""The one conversion between 8-bit images and the models' [-1, 1] range (256 bins of half-width 1/255)."""

from __future__ import annotations

import torch


def uint8_to_model(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] as `dtype` values in [-1, 1]: x = v / 127.5 - 1, the bin centres."""
    return images.to(dtype) / 127.5 - 1


def model_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] as uint8 images: the nearest of the 256 bin centres, clipped at the ends."""
    return ((images.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
