"""`FourierFeaturesUNet2DModel`: a UNet2DModel that also sees Fourier features of its input.

Kingma et al. 2021 ("Variational Diffusion Models", sec. 3.4 and App. C) concatenate sin(2^n π x) and
cos(2^n π x) of every input channel to the input. At high SNR the ELBO's terms pay for every error of the
predicted noise at the scale of the data's quantisation; a small UNet fed x alone resolves that scale poorly, while
features whose period 2^(1-n) matches the spacing of the data's levels make "where is x between two levels"
a linear read-out. The config keeps `in_channels` = the image channels, so every sampler (ours and diffusers')
feeds it images as it feeds a UNet2DModel; only `conv_in` is wider.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

MAX_FOURIER_FEATURES = 8
MAX_FOURIER_EXPONENT = 16
# 8-bit images in [-1, 1] have levels 2/255 (about 2^-7) apart: n = 8 has that period, n = 7 twice it
DEFAULT_FOURIER_EXPONENTS = (7, 8)


def check_fourier_feature_exponents(
    exponents: Sequence[int], name: str = "fourier_feature_exponents"
) -> tuple[int, ...]:
    """The exponents n of the features sin(2^n π x), cos(2^n π x), checked (configs may come from others).

    Raises:
        `ValueError`: not 1 to 8 distinct integers between 0 and 16; the message names `name`.
    """
    if isinstance(exponents, (str, bytes)) or not isinstance(exponents, Sequence):
        raise ValueError(f"{name}={exponents!r} must be a list of integers between 0 and {MAX_FOURIER_EXPONENT}")
    values = tuple(exponents)
    valid = all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_FOURIER_EXPONENT for n in values)
    if not valid or not 1 <= len(values) <= MAX_FOURIER_FEATURES or len(set(values)) != len(values):
        raise ValueError(
            f"{name}={list(values)!r} must be 1 to {MAX_FOURIER_FEATURES} distinct integers between 0 and "
            f"{MAX_FOURIER_EXPONENT} (n of the features sin(2^n pi x), cos(2^n pi x))"
        )
    return values


def _init(self, *, fourier_feature_exponents: Sequence[int] = DEFAULT_FOURIER_EXPONENTS, **unet_kwargs) -> None:
    exponents = check_fourier_feature_exponents(fourier_feature_exponents)
    if unet_kwargs.get("center_input_sample"):
        raise ValueError(
            "center_input_sample=True is not supported by FourierFeaturesUNet2DModel: its features are of the "
            "sample as given; centre the data instead"
        )
    skip_blocks = [b for b in (*unet_kwargs.get("down_block_types", ()), *unet_kwargs.get("up_block_types", ()))
                   if "Skip" in b]  # fmt: skip
    if skip_blocks:
        raise ValueError(
            f"FourierFeaturesUNet2DModel does not support the skip blocks {skip_blocks} (UNet2DModel hands them "
            "the network's input, here the image with its features); use the other down/up block types"
        )
    UNet2DModel.__init__(self, **unet_kwargs)
    channels = self.config.in_channels * (1 + 2 * len(exponents))
    self.conv_in = nn.Conv2d(channels, self.conv_in.out_channels, kernel_size=3, padding=(1, 1))


# diffusers reads a model's config keys from its __init__ signature: publish UNet2DModel's arguments beside ours
# (all keyword-only, as `_init` takes them) so that from_config and from_pretrained pass every key through.
_init.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in inspect.signature(UNet2DModel.__init__).parameters.items()
        if name != "self"
    ]
    + [
        inspect.Parameter(
            "fourier_feature_exponents", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_FOURIER_EXPONENTS
        )
    ]
)


class FourierFeaturesUNet2DModel(UNet2DModel):
    """A `UNet2DModel` whose first convolution also gets sin(2^n π x) and cos(2^n π x) of each input channel.

    Args:
        fourier_feature_exponents (`Sequence[int]`, defaults to `(7, 8)`): the exponents n, 1 to 8 distinct
            integers between 0 and 16. Pick n so that the period 2^(1-n) is about the spacing of the data's levels
            in [-1, 1]: 2/255 for 8-bit images (n = 8, with 7), 0.125 for the 17-level digits (n = 4, with 3 and 5).
        **unet_kwargs: every `UNet2DModel` argument, with its meaning (`in_channels` is the image's channels;
            `center_input_sample=True` is refused).
    """

    __init__ = register_to_config(_init)

    def input_features(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C (1 + 2K), H, W): the sample, then the K sines and the K cosines of each channel.
        The angles are formed in float32 (2^n π x loses its phase in half precision)."""
        # from the config, not a buffer: `.half()` would round a buffer's 2^n pi (2^8 pi to 804.0, not 804.25)
        exponents = self.config.fourier_feature_exponents
        frequencies = torch.tensor([math.pi * 2.0**n for n in exponents], dtype=torch.float32, device=sample.device)
        angles = sample.float().unsqueeze(2) * frequencies.view(1, 1, -1, 1, 1)
        features = torch.cat([torch.sin(angles).flatten(1, 2), torch.cos(angles).flatten(1, 2)], dim=1)
        return torch.cat([sample, features.to(sample.dtype)], dim=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        """`UNet2DModel.forward` on the sample with its features."""
        return super().forward(self.input_features(sample), timestep, class_labels, return_dict)
