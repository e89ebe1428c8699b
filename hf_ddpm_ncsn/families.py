"""The family registry: everything that differs between an NCSN and a DDPM, declared once per family.

A family declares its training-argument class, how it builds its scheduler and UNet, its loss, its pipeline class,
its model card (template `model_cards/<name>.md`, tags, the scheduler keys the card lists), which scheduler keys only
change sampling, and whether its scheduler needs the training images. Training, sharing and evaluation look a
family up here (`get_family`, `family_of_pipeline`) instead of keeping maps of their own; everything else (data,
loop, EMA, checkpoints, logging, sharing) is written once. Adding a family is one more `Family` subclass here
(with its scheduler, pipeline and card template).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from diffusers import UNet2DModel

from .losses import LossTerms, ddpm_loss_terms, ncsn_score_matching_terms
from .ncsnv2 import langevin_step_size, sigma_max_from_data
from .pipelines import DDPMPosteriorPipeline, NCSNPipeline
from .pipelines.shareable_pipeline import ShareablePipeline
from .schedulers import DDPMPosteriorScheduler, NCSNScheduler
from .training.arguments import DDPMArguments, NCSNArguments, TrainingArguments
from .training.timestep_sampling import LossSecondMomentSampler
from .unets import build_unet, default_unet_config, load_unet_config

__all__ = [
    "FAMILIES",
    "DDPMFamily",
    "Family",
    "NCSNFamily",
    "build_unet",
    "default_unet_config",
    "family_of_pipeline",
    "get_family",
    "load_unet_config",
    "make_family",
    "register_family",
    "unet_config",
]

logger = logging.getLogger(__name__)


def unet_config(args: TrainingArguments) -> dict[str, Any]:
    """The UNet config of a run before the data fixes its size and channels (loaded, or the default one)."""
    if args.model_config_name_or_path is None:
        config = default_unet_config(args.block_out_channels, args.layers_per_block)
        if args.fourier_feature_exponents is not None:
            config["fourier_feature_exponents"] = list(args.fourier_feature_exponents)
    else:
        config = load_unet_config(args.model_config_name_or_path)
    levels = len(config["block_out_channels"])
    if args.resolution % 2 ** (levels - 1):
        raise ValueError(
            f"--resolution {args.resolution} must be divisible by {2 ** (levels - 1)}: a UNet with {levels} levels "
            "halves it at every level but the last"
        )
    return config


class Family:
    """A model family: the declarations (class attributes) and the builders (methods, given the parsed
    family-specific arguments) the rest of the package looks up.

    Args:
        args: an instance of `arguments_class`, the family's parsed command-line arguments.
    """

    name: ClassVar[str]
    arguments_class: ClassVar[type]
    pipeline_class: ClassVar[type[ShareablePipeline]]
    #: Hub tags of the model card, after the package's common ones
    card_tags: ClassVar[tuple[str, ...]]
    #: scheduler config keys the model card lists (the rest is in scheduler_config.json)
    card_scheduler_keys: ClassVar[tuple[str, ...]]
    #: scheduler config keys that only change sampling: a resumed run may change them
    sampling_config_keys: ClassVar[tuple[str, ...]]
    #: whether `build_scheduler` reads the training images
    needs_training_images: ClassVar[bool]

    def __init__(self, args):
        self.args = args

    def build_scheduler(self, train_images: torch.Tensor | None):
        raise NotImplementedError

    def build_unet(self, config: dict[str, Any], resolution: int, channels: int) -> UNet2DModel:
        raise NotImplementedError

    def loss_terms(self, model, scheduler, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """The per-sample training loss and its named parts, its timesteps and noise drawn from `generator` (default:
        the global RNG). A family whose `timestep_sampler` returns a sampler also takes `timesteps=` (B,), the
        sampler's draws, and leaves the weighting to the caller."""
        raise NotImplementedError

    def timestep_sampler(self, scheduler) -> LossSecondMomentSampler | None:
        """The importance sampler of training timesteps, or None when the loss draws them uniformly itself."""
        return None

    def loss(self, model, scheduler, x0: torch.Tensor) -> torch.Tensor:
        """The batch loss training minimises."""
        return self.loss_terms(model, scheduler, x0).mean()

    def pipeline(self, unet: UNet2DModel, scheduler, class_names: list[str] | None = None) -> ShareablePipeline:
        """The family's pipeline; `class_names` names the classes of a class-conditional UNet."""
        return self.pipeline_class(unet=unet, scheduler=scheduler, class_names=class_names)

    def sample_kwargs(self) -> dict[str, Any]:
        """Sampling arguments of the trained pipeline's previews and sample grids."""
        return {}


#: name -> family class, in registration order
FAMILIES: dict[str, type[Family]] = {}


def register_family(family: type[Family]) -> type[Family]:
    """Class decorator adding a family to `FAMILIES`; its pipeline must name it as its `model_card_family`."""
    if family.pipeline_class.model_card_family != family.name:
        raise ValueError(f"{family.pipeline_class.__name__}.model_card_family must be {family.name!r}")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> type[Family]:
    """The family registered as `name`.

    Raises:
        `ValueError`: no such family; the message lists the registered ones.
    """
    if name not in FAMILIES:
        raise ValueError(f"family={name!r} is not a model family; accepted values: {tuple(FAMILIES)}")
    return FAMILIES[name]


def family_of_pipeline(class_name: str) -> type[Family]:
    """The family whose pipeline loads folders of `class_name` (model_index.json's `_class_name`).

    Raises:
        `ValueError`: no family loads that class.
    """
    for family in FAMILIES.values():
        if class_name in family.pipeline_class.loadable_class_names:
            return family
    accepted = [name for family in FAMILIES.values() for name in family.pipeline_class.loadable_class_names]
    raise ValueError(f"pipeline class {class_name!r} belongs to no model family; accepted values: {accepted}")


@register_family
class NCSNFamily(Family):
    """NCSN: denoising score matching over geometric noise levels, annealed Langevin sampling."""

    name = "ncsn"
    arguments_class = NCSNArguments
    pipeline_class = NCSNPipeline
    card_tags = ("ncsn", "score-matching", "annealed-langevin-dynamics")
    card_scheduler_keys = (
        "num_train_timesteps",
        "sigma_min",
        "sigma_max",
        "num_langevin_steps",
        "step_size",
        "denoise_final",
        "prediction_type",
    )
    sampling_config_keys = ("num_langevin_steps", "step_size", "denoise_final")
    # sigma_max="auto" is read from the training images (Technique 1 of NCSNv2)
    needs_training_images = True
    args: NCSNArguments

    def build_scheduler(self, train_images: torch.Tensor | None) -> NCSNScheduler:
        a = self.args
        if a.sigma_max == "auto" and train_images is None:
            raise ValueError("sigma_max='auto' needs the training images")
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

    def build_unet(self, config: dict[str, Any], resolution: int, channels: int) -> UNet2DModel:
        extra = {"time_embedding_type": "fourier"} if self.args.conditioning == "fourier" else {}
        return build_unet(config, resolution, channels, channels, **extra)

    def loss_terms(
        self, model, scheduler: NCSNScheduler, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> LossTerms:
        embedding = "fourier" if self.args.conditioning == "fourier" else "positional"
        return ncsn_score_matching_terms(model, scheduler, x0, time_embedding_type=embedding, generator=generator)


@register_family
class DDPMFamily(Family):
    """DDPM: the simple, vlb or hybrid loss, ancestral sampling."""

    name = "ddpm"
    arguments_class = DDPMArguments
    pipeline_class = DDPMPosteriorPipeline
    card_tags = ("ddpm", "diffusion", "score-matching")
    card_scheduler_keys = (
        "num_train_timesteps",
        "beta_schedule",
        "beta_start",
        "beta_end",
        "variance_type",
        "prediction_type",
        "clip_sample",
    )
    sampling_config_keys = (
        "clip_sample",
        "clip_sample_range",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "timestep_spacing",
        "steps_offset",
    )
    needs_training_images = False
    args: DDPMArguments

    def build_scheduler(self, train_images: torch.Tensor | None = None) -> DDPMPosteriorScheduler:
        return DDPMPosteriorScheduler(**self.args.scheduler_kwargs())

    def build_unet(self, config: dict[str, Any], resolution: int, channels: int) -> UNet2DModel:
        learned = self.args.variance_type in ("learned", "learned_range")
        return build_unet(config, resolution, channels, 2 * channels if learned else channels)

    def loss_terms(
        self,
        model,
        scheduler: DDPMPosteriorScheduler,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> LossTerms:
        a = self.args
        return ddpm_loss_terms(
            model, scheduler, x0, a.loss_type, a.vlb_weight, generator=generator, timesteps=timesteps
        )

    def timestep_sampler(self, scheduler: DDPMPosteriorScheduler) -> LossSecondMomentSampler | None:
        if self.args.timestep_sampler == "uniform":
            return None
        return LossSecondMomentSampler(scheduler.config.num_train_timesteps)

    def sample_kwargs(self) -> dict[str, Any]:
        steps = self.args.ddpm_num_inference_steps
        return {} if steps is None else {"num_inference_steps": steps}


def make_family(name: str, args) -> Family:
    """The family registered as `name`, built with its parsed arguments."""
    return get_family(name)(args)
