"""What differs between training an NCSN and a DDPM: the scheduler, the UNet's conditioning, the loss and the
pipeline. Everything else (data, loop, EMA, checkpoints, logging, sharing) lives once in `training.py`."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DModel

from .losses import ddpm_loss, ncsn_score_matching_loss
from .ncsnv2 import langevin_step_size, sigma_max_from_data
from .pipelines import DDPMPosteriorPipeline, NCSNPipeline
from .schedulers import DDPMPosteriorScheduler, NCSNScheduler
from .training_args import DDPMArguments, NCSNArguments, TrainingArguments

logger = logging.getLogger(__name__)


def build_unet(args: TrainingArguments, channels: int, out_channels: int, **overrides: Any) -> UNet2DModel:
    """A UNet2DModel from --model_config_name_or_path, or a small one sized for --resolution."""
    if args.model_config_name_or_path is not None:
        path = args.model_config_name_or_path
        config = UNet2DModel.load_config(os.path.dirname(path) if path.endswith(".json") else path)
        config.update(sample_size=args.resolution, in_channels=channels, out_channels=out_channels, **overrides)
        return UNet2DModel.from_config(config)
    widths = tuple(args.block_out_channels or (32, 64, 64))
    # attention only at the coarsest level, where it is cheap
    down = ("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1)
    return UNet2DModel(
        sample_size=args.resolution,
        in_channels=channels,
        out_channels=out_channels,
        block_out_channels=widths,
        layers_per_block=args.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=min(8, widths[0]),
        **overrides,
    )


@dataclass
class NCSNFamily:
    """NCSN: denoising score matching over geometric noise levels, annealed Langevin sampling."""

    args: NCSNArguments
    name: str = "ncsn"

    def build_scheduler(self, train_images: torch.Tensor) -> NCSNScheduler:
        a = self.args
        sigma_max = sigma_max_from_data(train_images) if a.sigma_max == "auto" else a.sigma_max
        if sigma_max <= a.sigma_min:
            raise ValueError(f"sigma_max={sigma_max:.4g} from the data must exceed --sigma_min={a.sigma_min}")
        gamma = (sigma_max / a.sigma_min) ** (1 / (a.num_noise_levels - 1))
        step_size = (
            langevin_step_size(a.sigma_min, gamma, a.num_langevin_steps) if a.step_size == "auto" else a.step_size
        )
        logger.info(
            "NCSN levels: sigma %.4g..%.4g (gamma %.3f), step size %.3g", a.sigma_min, sigma_max, gamma, step_size
        )
        return NCSNScheduler(
            num_train_timesteps=a.num_noise_levels,
            sigma_min=a.sigma_min,
            sigma_max=float(sigma_max),
            num_langevin_steps=a.num_langevin_steps,
            step_size=float(step_size),
            denoise_final=a.denoise_final,
            prediction_type="score" if a.conditioning == "fourier" else "epsilon",
        )

    def build_unet(self, args: TrainingArguments, channels: int) -> UNet2DModel:
        extra = {"time_embedding_type": "fourier"} if self.args.conditioning == "fourier" else {}
        return build_unet(args, channels, channels, **extra)

    def loss(self, model, scheduler: NCSNScheduler, x0: torch.Tensor) -> torch.Tensor:
        embedding = "fourier" if self.args.conditioning == "fourier" else "positional"
        return ncsn_score_matching_loss(model, scheduler, x0, time_embedding_type=embedding)

    def pipeline(self, unet: UNet2DModel, scheduler: NCSNScheduler) -> NCSNPipeline:
        return NCSNPipeline(unet=unet, scheduler=scheduler)

    def sample_kwargs(self) -> dict[str, Any]:
        return {}


@dataclass
class DDPMFamily:
    """DDPM: the simple, vlb or hybrid loss, ancestral sampling."""

    args: DDPMArguments
    name: str = "ddpm"

    def build_scheduler(self, train_images: torch.Tensor) -> DDPMPosteriorScheduler:
        a = self.args
        return DDPMPosteriorScheduler(
            num_train_timesteps=a.ddpm_num_steps,
            beta_schedule=a.ddpm_beta_schedule,
            beta_start=a.beta_start,
            beta_end=a.beta_end,
            variance_type=a.variance_type,
            prediction_type=a.prediction_type,
        )

    def build_unet(self, args: TrainingArguments, channels: int) -> UNet2DModel:
        learned = self.args.variance_type in ("learned", "learned_range")
        return build_unet(args, channels, 2 * channels if learned else channels)

    def loss(self, model, scheduler: DDPMPosteriorScheduler, x0: torch.Tensor) -> torch.Tensor:
        return ddpm_loss(model, scheduler, x0, loss_type=self.args.loss_type, vlb_weight=self.args.vlb_weight)

    def pipeline(self, unet: UNet2DModel, scheduler: DDPMPosteriorScheduler) -> DDPMPosteriorPipeline:
        return DDPMPosteriorPipeline(unet=unet, scheduler=scheduler)

    def sample_kwargs(self) -> dict[str, Any]:
        steps = self.args.ddpm_num_inference_steps
        return {} if steps is None else {"num_inference_steps": steps}


def make_family(name: str, args: NCSNArguments | DDPMArguments) -> NCSNFamily | DDPMFamily:
    return {"ncsn": NCSNFamily, "ddpm": DDPMFamily}[name](args)


def json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """Keep the JSON-serialisable values (for trackers and model cards); others become strings."""
    safe = {}
    for key, value in values.items():
        try:
            json.dumps(value)
            safe[key] = value
        except TypeError:
            safe[key] = str(value)
        if isinstance(value, float) and not math.isfinite(value):
            safe[key] = str(value)
    return safe
