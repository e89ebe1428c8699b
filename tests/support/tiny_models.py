"""Tiny UNets and pipelines for tests: a few thousand parameters, sample_size 8-16."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler, NCSNPipeline, NCSNScheduler
from hf_ddpm_ncsn.unets import build_unet, default_unet_config


def tiny_unet(channels: int = 1, sample_size: int = 8, out_channels: int | None = None, **kwargs) -> UNet2DModel:
    """The package's default UNet at widths (8, 16) without attention blocks, seeded."""
    torch.manual_seed(0)
    config = default_unet_config((8, 16), layers_per_block=1, attention=False)
    return build_unet(config, sample_size, channels, out_channels or channels, **kwargs)


def tiny_ncsn(channels: int = 1, sample_size: int = 8, fourier: bool = False) -> NCSNPipeline:
    unet = tiny_unet(channels, sample_size, **({"time_embedding_type": "fourier"} if fourier else {}))
    scheduler = NCSNScheduler(
        num_train_timesteps=4,
        sigma_min=0.05,
        sigma_max=1.0,
        num_langevin_steps=2,
        prediction_type="score" if fourier else "epsilon",
    )
    pipe = NCSNPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ddpm(channels: int = 1, sample_size: int = 8, num_train_timesteps: int = 20, **scheduler_kwargs):
    pipe = DDPMPosteriorPipeline(
        unet=tiny_unet(channels, sample_size),
        scheduler=DDPMPosteriorScheduler(num_train_timesteps=num_train_timesteps, **scheduler_kwargs),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
