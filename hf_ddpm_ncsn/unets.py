"""The one place UNet2DModels are configured and built: the default small UNet, configs from files, folders or the
Hub, and a config sized for the data (used by training, the benchmark and the tests' tiny models)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from diffusers import UNet2DModel

from .fourier_unet import FourierFeaturesUNet2DModel

UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DModel, FourierFeaturesUNet2DModel)}


def default_unet_config(
    block_out_channels: Sequence[int] | None, layers_per_block: int | None, attention: bool = True
) -> dict[str, Any]:
    """The small UNet2DModel the scripts train by default: attention only at the coarsest level, where it is
    cheap (none with `attention=False`, as the tests' tiny UNets); every width works (GroupNorm takes the largest
    group count up to 8 that divides all of them, and the attention heads are at most as wide as the coarsest
    level)."""
    widths = tuple(block_out_channels or (32, 64, 64))
    coarsest = ("AttnDownBlock2D", "AttnUpBlock2D") if attention else ("DownBlock2D", "UpBlock2D")
    return {
        "block_out_channels": widths,
        "layers_per_block": 1 if layers_per_block is None else layers_per_block,
        "down_block_types": ("DownBlock2D",) * (len(widths) - 1) + coarsest[:1],
        "up_block_types": coarsest[1:] + ("UpBlock2D",) * (len(widths) - 1),
        "norm_num_groups": max(g for g in range(1, 9) if all(w % g == 0 for w in widths)),
        "attention_head_dim": min(8, widths[-1]),
    }


def load_unet_config(name_or_path: str) -> dict[str, Any]:
    """A UNet2DModel config from a JSON file, a folder (its config.json, or unet/config.json of a saved pipeline)
    or a Hub repo id (the same two places).

    Raises:
        `ValueError`: none of these holds a UNet2DModel config; the message names the argument.
    """
    if os.path.isfile(name_or_path):
        candidates = [{}]  # diffusers' load_config reads a JSON file path as it is
    else:
        candidates = [{}, {"subfolder": "unet"}]
    reasons = []
    for kwargs in candidates:
        try:
            config = UNet2DModel.load_config(name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            reasons.append(str(err).splitlines()[0])
            continue
        if config.get("_class_name", "UNet2DModel") not in UNET_CLASSES or "block_out_channels" not in config:
            raise ValueError(
                f"--model_config_name_or_path {name_or_path!r} holds a {config.get('_class_name')!r} config, not a "
                f"config of {' or '.join(UNET_CLASSES)} (config.json with block_out_channels)"
            )
        return dict(config)
    raise ValueError(
        f"--model_config_name_or_path {name_or_path!r} is neither a UNet2DModel config file, nor a folder holding "
        f"config.json or unet/config.json, nor a Hub repo with one ({'; '.join(reasons)})"
    )


def build_unet(config: dict[str, Any], resolution: int, channels: int, out_channels: int, **overrides) -> UNet2DModel:
    """A UNet2DModel from a config (see `unet_config`), sized for the data: a `FourierFeaturesUNet2DModel` when the
    config has `fourier_feature_exponents`."""
    cls = FourierFeaturesUNet2DModel if "fourier_feature_exponents" in config else UNet2DModel
    return cls.from_config(
        {**config, "sample_size": resolution, "in_channels": channels, "out_channels": out_channels, **overrides}
    )
