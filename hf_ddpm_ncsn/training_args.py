"""Command-line arguments of the training scripts.

Names follow diffusers' `examples/unconditional_image_generation/train_unconditional.py` wherever the meaning is
the same; the family-specific ones (NCSN noise levels and Langevin preview, DDPM schedule and losses) are added.
Every argument can also come from a JSON or YAML file (`--config FILE`); arguments on the command line win.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from diffusers.optimization import SchedulerType
from transformers import HfArgumentParser

from .losses import DDPM_LOSS_TYPES
from .schedulers.beta_schedules import BETA_SCHEDULES
from .schedulers.scheduling_ddpm_posterior import PREDICTION_TYPES as DDPM_PREDICTION_TYPES
from .schedulers.scheduling_ddpm_posterior import VARIANCE_TYPES


def _arg(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainingArguments:
    """Data, optimisation, checkpointing, logging and sharing: the same for both families."""

    # data
    dataset_name: str | None = _arg(
        None, "A `datasets` dataset (Hub name or local path). Default: scikit-learn's digits, embedded, no network."
    )
    dataset_config_name: str | None = _arg(None, "The dataset's configuration name.")
    train_data_dir: str | None = _arg(None, "A folder of images read with `datasets`' imagefolder.")
    image_column: str | None = _arg(None, "Column holding the images (default: the first image column).")
    cache_dir: str | None = _arg(None, "Where `datasets` caches downloads.")
    resolution: int = _arg(16, "Images are resized (shorter side) and cropped to this size.")
    center_crop: bool = _arg(False, "Center crop instead of a random crop.")
    random_flip: bool = _arg(False, "Random horizontal flips (off by default: flipped digits are not digits).")
    dataloader_num_workers: int = _arg(0, "DataLoader worker processes.")
    # model
    model_config_name_or_path: str | None = _arg(
        None, "A UNet2DModel config (folder or JSON file) to start from; default: a small UNet sized by --resolution."
    )
    block_out_channels: list[int] = _arg(None, "UNet channels per level (default: 32 64 64).")
    layers_per_block: int = _arg(1, "ResNet layers per UNet level.")
    # optimisation
    train_batch_size: int = _arg(64, "Batch size per process.")
    num_epochs: int = _arg(100, "Epochs to train (ignored when --max_train_steps is set).")
    max_train_steps: int | None = _arg(None, "Total optimisation steps; overrides --num_epochs.")
    gradient_accumulation_steps: int = _arg(1, "Batches accumulated per optimisation step.")
    learning_rate: float = _arg(1e-3, "Peak learning rate of AdamW.")
    lr_scheduler: str = _arg("cosine", "Learning-rate schedule.", choices=[s.value for s in SchedulerType])
    lr_warmup_steps: int = _arg(100, "Warm-up steps of the learning-rate schedule.")
    adam_beta1: float = _arg(0.95, "AdamW beta1.")
    adam_beta2: float = _arg(0.999, "AdamW beta2.")
    adam_weight_decay: float = _arg(1e-6, "AdamW weight decay.")
    adam_epsilon: float = _arg(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _arg(1.0, "Gradient clipping norm (0 disables clipping).")
    mixed_precision: str = _arg("no", "Mixed precision (fp16 needs a GPU).", choices=["no", "fp16", "bf16"])
    seed: int = _arg(0, "Seed of the model initialisation, the data order and the noise.")
    # EMA
    use_ema: bool = _arg(True, "Keep an exponential moving average of the weights; the saved pipeline uses it.")
    ema_inv_gamma: float = _arg(1.0, "EMA warm-up inverse gamma.")
    ema_power: float = _arg(3 / 4, "EMA warm-up power.")
    ema_max_decay: float = _arg(0.999, "Largest EMA decay.")
    # checkpoints, previews, logs
    output_dir: str = _arg("outputs/model", "Where the pipeline, samples, logs and checkpoints are written.")
    checkpointing_steps: int = _arg(500, "Save an accelerate checkpoint every this many steps (0: never).")
    checkpoints_total_limit: int | None = _arg(None, "Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = _arg(None, '"latest" or a checkpoint folder to resume from.')
    save_images_steps: int = _arg(0, "Log a grid of preview samples every this many steps (0: only at the end).")
    num_preview_images: int = _arg(16, "Images in the preview and final sample grids.")
    logger: str = _arg("tensorboard", "Experiment tracker.", choices=["tensorboard", "none"])
    logging_dir: str = _arg("logs", "Tracker folder, relative to --output_dir.")
    # sharing
    push_to_hub: bool = _arg(False, "Push the final pipeline and its model card to the Hub.")
    hub_model_id: str | None = _arg(None, "Hub repo id (default: the output folder name).")
    hub_token: str | None = _arg(None, "Hub token (default: the logged-in token). Never written anywhere.")
    hub_private_repo: bool = _arg(False, "Create the Hub repo as private.")

    def __post_init__(self) -> None:
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ValueError("give either --dataset_name or --train_data_dir, not both")
        for name in ("resolution", "train_batch_size", "num_epochs", "gradient_accumulation_steps"):
            _check_positive(name, getattr(self, name))
        for name in ("lr_warmup_steps", "checkpointing_steps", "save_images_steps", "dataloader_num_workers"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        _check_positive("num_preview_images", self.num_preview_images)
        if self.max_train_steps is not None:
            _check_positive("max_train_steps", self.max_train_steps)
        if self.checkpoints_total_limit is not None:
            _check_positive("checkpoints_total_limit", self.checkpoints_total_limit)
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.ema_max_decay < 1:
            raise ValueError(f"--ema_max_decay must lie in (0, 1), got {self.ema_max_decay}")
        if self.block_out_channels is not None and any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"--block_out_channels must be positive, got {self.block_out_channels}")
        if self.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise ValueError(
                f"--resume_from_checkpoint {self.resume_from_checkpoint!r} is not a folder; pass 'latest' or a "
                "checkpoint-<step> folder"
            )


@dataclass
class NCSNArguments:
    """Noise levels, conditioning and the Langevin sampler of the previews and the saved pipeline."""

    num_noise_levels: int = _arg(10, "Number of geometric noise levels T.")
    sigma_min: float = _arg(0.01, "Smallest noise level.")
    sigma_max: str = _arg(
        "auto",
        'Largest noise level: a number, or "auto" = the largest pairwise distance of the '
        "training images (NCSNv2 technique 1).",
    )
    conditioning: str = _arg(
        "fourier",
        '"fourier": the UNet gets sigma and its output is divided by sigma (NCSNv2 s(x)/sigma, score prediction); '
        '"index": a positional UNet gets the level index and predicts the noise.',
        choices=["fourier", "index"],
    )
    num_langevin_steps: int = _arg(20, "Langevin updates per level when sampling.")
    step_size: str = _arg(
        "auto",
        'Langevin step size eps (eta_t = eps sigma_t^2 / sigma_min^2): a number, or "auto" = NCSNv2 '
        "technique 4 for --num_langevin_steps.",
    )
    denoise_final: bool = _arg(True, "Apply the Tweedie denoise after the last level.")

    def __post_init__(self) -> None:
        if self.num_noise_levels < 2:
            raise ValueError(f"--num_noise_levels must be >= 2, got {self.num_noise_levels}")
        _check_positive("num_langevin_steps", self.num_langevin_steps)
        self.sigma_max = _number_or_auto("sigma_max", self.sigma_max)
        self.step_size = _number_or_auto("step_size", self.step_size)
        if not self.sigma_min > 0:
            raise ValueError(f"--sigma_min must be positive, got {self.sigma_min}")
        if self.sigma_max != "auto" and self.sigma_max <= self.sigma_min:
            raise ValueError(f"--sigma_max={self.sigma_max} must exceed --sigma_min={self.sigma_min}")


@dataclass
class DDPMArguments:
    """Diffusion schedule, parameterisation and training loss."""

    ddpm_num_steps: int = _arg(1000, "Diffusion steps T.")
    ddpm_num_inference_steps: int | None = _arg(None, "Sampling steps of the previews and grid (default: T).")
    ddpm_beta_schedule: str = _arg("linear", "Beta schedule.", choices=list(BETA_SCHEDULES))
    beta_start: float = _arg(1e-4, "First beta.")
    beta_end: float = _arg(0.02, "Last beta.")
    variance_type: str = _arg("fixed_small", "Reverse-process variance.", choices=list(VARIANCE_TYPES))
    prediction_type: str = _arg("epsilon", "What the UNet predicts.", choices=list(DDPM_PREDICTION_TYPES))
    loss_type: str = _arg("simple", "simple (eps MSE), vlb (the true bound) or hybrid.", choices=list(DDPM_LOSS_TYPES))
    vlb_weight: float = _arg(0.001, "lambda of the hybrid loss.")

    def __post_init__(self) -> None:
        if self.ddpm_num_steps < 2:
            raise ValueError(f"--ddpm_num_steps must be >= 2, got {self.ddpm_num_steps}")
        if self.ddpm_num_inference_steps is not None and not 1 <= self.ddpm_num_inference_steps <= self.ddpm_num_steps:
            raise ValueError(f"--ddpm_num_inference_steps must lie in [1, {self.ddpm_num_steps}]")
        if self.loss_type == "simple" and self.variance_type in ("learned", "learned_range"):
            raise ValueError(
                f"--loss_type simple does not train the variance of --variance_type {self.variance_type}; "
                "use --loss_type hybrid or vlb"
            )


def _check_positive(name: str, value: int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"--{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _number_or_auto(name: str, value: str | float) -> str | float:
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f'--{name} must be a positive number or "auto", got {value!r}') from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f'--{name} must be a positive number or "auto", got {value!r}')
    return number


def _config_file_to_argv(path: str) -> list[str]:
    """Turn a JSON/YAML mapping into command-line arguments, so file and command line share one validation."""
    with open(path, encoding="utf-8") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(f)
        else:
            values = json.load(f)
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of argument names to values")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        argv.extend(str(v) for v in value) if isinstance(value, list) else argv.append(str(value))
    return argv


def parse_training_arguments(family: str, argv: list[str] | None = None) -> tuple[TrainingArguments, Any]:
    """Parse the arguments of `scripts/train_<family>.py` (`family` is "ncsn" or "ddpm").

    `--config FILE` (JSON or YAML) supplies defaults; arguments on the command line override it.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv) or not os.path.isfile(argv[at + 1]):
            raise ValueError("--config needs an existing JSON or YAML file")
        argv = _config_file_to_argv(argv[at + 1]) + argv[:at] + argv[at + 2 :]
    family_args = {"ncsn": NCSNArguments, "ddpm": DDPMArguments}[family]
    parser = HfArgumentParser((TrainingArguments, family_args), description=f"Train a {family.upper()} pipeline.")
    training, specific = parser.parse_args_into_dataclasses(args=argv)
    return training, specific
