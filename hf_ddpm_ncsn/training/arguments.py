"""Command-line arguments of the training scripts.

Names follow diffusers' `examples/unconditional_image_generation/train_unconditional.py` wherever the meaning is
the same; the family-specific ones (NCSN noise levels and Langevin preview, DDPM schedule and losses) are added.
Every argument can also come from a YAML or JSON file (`--config FILE`, see `config.py`); flags on the command line
win.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any

from diffusers.optimization import SchedulerType
from transformers import HfArgumentParser

from ..argument_errors import describe_unknown_flags
from ..fourier_unet import check_fourier_feature_exponents
from ..losses import DDPM_LOSS_TYPES
from ..schedulers import DDPMPosteriorScheduler
from ..schedulers.beta_schedules import BETA_SCHEDULES, LINEAR_LOGSNR, LOGSNR_RANGE, linear_logsnr_betas
from ..schedulers.scheduling_ddpm_posterior import MAX_TRAIN_TIMESTEPS, VARIANCE_TYPES
from ..schedulers.scheduling_ddpm_posterior import PREDICTION_TYPES as DDPM_PREDICTION_TYPES
from ..schedulers.scheduling_ncsn import MAX_CHAIN_LENGTH, MAX_NOISE_LEVELS
from ..sharing.atomic import check_replaceable
from .config import config_to_argv
from .timestep_sampling import TIMESTEP_SAMPLERS

__all__ = ["DDPMArguments", "NCSNArguments", "TrainingArguments", "parse_training_arguments"]

# owner/name or name, as the Hub spells repo ids
#: --logger: the accelerate trackers of each choice
TRACKERS: dict[str, list[str] | None] = {
    "tensorboard": ["tensorboard"],
    "wandb": ["wandb"],
    "all": ["tensorboard", "wandb"],
    "none": None,
}
#: --keep_best_by: the in-training evaluation's metrics (every one lower-is-better) and the families that have them
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "held_out_loss": ("ncsn", "ddpm"),
    "held_out_bits_per_dim": ("ddpm",),
    "ode_bits_per_dim": ("ncsn", "ddpm"),
    "classifier_frechet_distance": ("ncsn", "ddpm"),
}
#: the most images (or samples) one in-training evaluation may use: its cost stays bounded
MAX_EVAL_IMAGES = 4096
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _looks_local(path: str) -> bool:
    """Whether a --model_config_name_or_path that does not exist was meant as a local path, not a Hub repo id."""
    explicit = path.endswith(".json") or path.startswith((".", "~", os.sep)) or os.path.isabs(path)
    return explicit or not _REPO_ID.match(path)


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
        None,
        "A UNet2DModel config to build the model from: a JSON file, a folder (its config.json, or unet/config.json "
        "of a saved pipeline) or a Hub repo id; default: a small UNet sized by --resolution. Its sample size and "
        "channels follow the data.",
    )
    block_out_channels: list[int] = _arg(None, "UNet channels per level (default: 32 64 64).")
    layers_per_block: int | None = _arg(None, "ResNet layers per UNet level (default: 1).")
    fourier_feature_exponents: list[int] = _arg(
        None,
        "Exponents n of input features sin(2^n pi x), cos(2^n pi x) (Kingma et al. 2021): the model becomes a "
        "FourierFeaturesUNet2DModel; pick n so that 2^(1-n) is about the spacing of the data's levels in [-1, 1] "
        "(3 4 5 for the 17-level digits, 7 8 for 8-bit images). Default: none, a plain UNet2DModel.",
    )
    class_conditional: bool = _arg(
        False,
        "Train a class-conditional model for classifier-free guidance (needs a dataset with labels): the UNet gets "
        "num_class_embeds = classes + 1, the last being the null class.",
    )
    class_dropout_prob: float = _arg(
        0.1, "Probability in [0, 1] that a label is replaced by the null class (--class_conditional)."
    )
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
    logger: str = _arg(
        "tensorboard",
        "Experiment tracker: tensorboard, wandb (the [wandb] extra; WANDB_MODE=offline needs no network), all (both) "
        "or none.",
        choices=list(TRACKERS),
    )
    logging_dir: str = _arg("logs", "Tracker folder, relative to --output_dir.")
    # evaluation during training
    eval_steps: int = _arg(
        0,
        "Evaluate the EMA weights every this many steps and at the end (0: never), on the main process: the held-out "
        "loss, a DDPM's stratified ELBO, the classifier Fréchet distance, optionally the ODE bits/dim; logged to the "
        "trackers and to metrics.json.",
    )
    eval_num_images: int = _arg(
        256, f"Held-out images of the loss and likelihoods (the first ones of the split; at most {MAX_EVAL_IMAGES})."
    )
    eval_num_samples: int = _arg(
        256, f"Samples for the classifier Fréchet distance (0 skips it; at most {MAX_EVAL_IMAGES})."
    )
    eval_elbo_strata: int = _arg(
        25, "DDPM: timesteps K per image of the stratified ELBO (above --ddpm_num_steps T: all T, the exact bound)."
    )
    eval_ode_images: int = _arg(
        0, "Held-out images of the probability-flow ODE bits/dim (0: skipped, it costs hundreds of network calls)."
    )
    eval_batch_size: int = _arg(256, "Images per network call of the evaluation.")
    keep_best_by: str | None = _arg(
        None,
        "Also keep the pipeline of the evaluation with the lowest value of this metric in <output_dir>/best "
        "(needs --eval_steps).",
        choices=list(EVAL_METRICS),
    )
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
        self._check_evaluation_arguments()
        for name in ("max_train_steps", "checkpoints_total_limit", "layers_per_block"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if "wandb" in (TRACKERS[self.logger] or ()) and importlib.util.find_spec("wandb") is None:
            raise ValueError(
                f"--logger {self.logger} needs wandb, which is not installed: pip install 'hf_ddpm_ncsn[wandb]'"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must lie in [0, 2**32 - 1] (numpy's seed range), got {self.seed}")
        _check_number("learning_rate", self.learning_rate, low=0.0)
        _check_number("adam_beta1", self.adam_beta1, low=0.0, high=1.0, include_low=True)
        _check_number("adam_beta2", self.adam_beta2, low=0.0, high=1.0, include_low=True)
        _check_number("adam_epsilon", self.adam_epsilon, low=0.0)
        _check_number("adam_weight_decay", self.adam_weight_decay, low=0.0, include_low=True)
        _check_number("max_grad_norm", self.max_grad_norm, low=0.0, include_low=True)
        _check_number("ema_inv_gamma", self.ema_inv_gamma, low=0.0)
        _check_number("ema_power", self.ema_power, low=0.0)
        _check_number("ema_max_decay", self.ema_max_decay, low=0.0, high=1.0)
        _check_number("class_dropout_prob", self.class_dropout_prob, 0.0, 1.0, include_low=True, include_high=True)
        self._check_model_arguments()
        try:  # the final save replaces the whole folder: refuse now what it could not replace hours later
            check_replaceable(self.output_dir)
        except (NotADirectoryError, ValueError) as err:
            raise ValueError(f"--output_dir {self.output_dir!r}: {err}") from None
        if self.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(self.resume_from_checkpoint):
            raise ValueError(
                f"--resume_from_checkpoint {self.resume_from_checkpoint!r} is not a folder; pass 'latest' or a "
                "checkpoint-<step> folder"
            )

    def _check_evaluation_arguments(self) -> None:
        _check_positive("eval_steps", self.eval_steps, allow_zero=True)
        for name in ("eval_num_images", "eval_num_samples", "eval_ode_images", "eval_batch_size"):
            value = getattr(self, name)
            low = 1 if name in ("eval_num_images", "eval_batch_size") else 0
            if not low <= value <= MAX_EVAL_IMAGES:
                raise ValueError(f"--{name} must lie in [{low}, {MAX_EVAL_IMAGES}], got {value}")
        if self.eval_num_samples == 1:
            raise ValueError("--eval_num_samples must be 0 (no Fréchet distance) or at least 2, got 1")
        _check_positive("eval_elbo_strata", self.eval_elbo_strata)
        if self.keep_best_by is None:
            return
        if not self.eval_steps:
            raise ValueError(f"--keep_best_by {self.keep_best_by} needs --eval_steps (the evaluations it compares)")
        disabled = {"classifier_frechet_distance": "eval_num_samples", "ode_bits_per_dim": "eval_ode_images"}
        flag = disabled.get(self.keep_best_by)
        if flag is not None and not getattr(self, flag):
            raise ValueError(f"--keep_best_by {self.keep_best_by} needs --{flag} > 0 (it is not measured at 0)")

    def _check_model_arguments(self) -> None:
        path = self.model_config_name_or_path
        if path is not None:
            architecture = ("block_out_channels", "layers_per_block", "fourier_feature_exponents")
            given = [name for name in architecture if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"--{' and --'.join(given)} cannot be combined with --model_config_name_or_path: the config sets "
                    "the architecture; edit the config instead"
                )
            if not os.path.exists(path) and _looks_local(path):
                raise ValueError(
                    f"--model_config_name_or_path {path!r} does not exist (and is not a Hub repo id such as "
                    "'user/model'); pass a UNet2DModel config.json, a folder holding one, or a Hub repo id"
                )
        if self.fourier_feature_exponents is not None:
            check_fourier_feature_exponents(self.fourier_feature_exponents, name="--fourier_feature_exponents")
        widths = self.block_out_channels
        if widths is not None and (not widths or any(c <= 0 for c in widths)):
            raise ValueError(f"--block_out_channels must be positive, got {widths}")
        levels = len(widths) if widths else 3
        if path is None and self.resolution % 2 ** (levels - 1):
            raise ValueError(
                f"--resolution {self.resolution} must be divisible by {2 ** (levels - 1)}: a UNet with {levels} "
                "levels (--block_out_channels) halves it at every level but the last"
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
        if not 2 <= self.num_noise_levels <= MAX_NOISE_LEVELS:
            raise ValueError(f"--num_noise_levels must lie in [2, {MAX_NOISE_LEVELS}], got {self.num_noise_levels}")
        if not 1 <= self.num_langevin_steps <= MAX_CHAIN_LENGTH // self.num_noise_levels:
            raise ValueError(
                f"--num_langevin_steps must lie in [1, {MAX_CHAIN_LENGTH // self.num_noise_levels}] (at most "
                f"{MAX_CHAIN_LENGTH} steps in the chain), got {self.num_langevin_steps}"
            )
        self.sigma_max = _number_or_auto("sigma_max", self.sigma_max)
        self.step_size = _number_or_auto("step_size", self.step_size)
        _check_number("sigma_min", self.sigma_min, low=0.0)
        if self.sigma_max != "auto" and self.sigma_max <= self.sigma_min:
            raise ValueError(f"--sigma_max={self.sigma_max} must exceed --sigma_min={self.sigma_min}")


@dataclass
class DDPMArguments:
    """Diffusion schedule, parameterisation, training loss and timestep sampling."""

    ddpm_num_steps: int = _arg(1000, "Diffusion steps T.")
    ddpm_num_inference_steps: int | None = _arg(None, "Sampling steps of the previews and grid (default: T).")
    ddpm_beta_schedule: str = _arg(
        "linear",
        f"Beta schedule: diffusers' names, or {LINEAR_LOGSNR} (log-SNR linear from --logsnr_max at the first "
        "timestep to --logsnr_min at the last; saved as the scheduler's trained_betas, so diffusers loads it).",
        choices=[*BETA_SCHEDULES, LINEAR_LOGSNR],
    )
    beta_start: float = _arg(1e-4, f"First beta (not used by {LINEAR_LOGSNR}).")
    beta_end: float = _arg(0.02, f"Last beta (not used by {LINEAR_LOGSNR}).")
    logsnr_max: float = _arg(
        13.0,
        f"{LINEAR_LOGSNR}: log(alpha_bar / (1 - alpha_bar)) at the first timestep, in "
        f"[{LOGSNR_RANGE[0]:g}, {LOGSNR_RANGE[1]:g}]; larger: a smaller first variance, a lower decoder floor.",
    )
    logsnr_min: float = _arg(
        -10.0,
        f"{LINEAR_LOGSNR}: log-SNR at the last timestep, in [{LOGSNR_RANGE[0]:g}, {LOGSNR_RANGE[1]:g}] and below "
        "--logsnr_max (-10 is where the linear T = 1000 schedule ends).",
    )
    variance_type: str = _arg("fixed_small", "Reverse-process variance.", choices=list(VARIANCE_TYPES))
    prediction_type: str = _arg("epsilon", "What the UNet predicts.", choices=list(DDPM_PREDICTION_TYPES))
    loss_type: str = _arg("simple", "simple (eps MSE), vlb (the true bound) or hybrid.", choices=list(DDPM_LOSS_TYPES))
    vlb_weight: float = _arg(0.001, "lambda of the hybrid loss.")
    timestep_sampler: str = _arg(
        "uniform",
        "How training draws timesteps: uniform, or loss-second-moment (Nichol & Dhariwal 2021: p_t proportional "
        "to the RMS of each timestep's last 10 losses, mixed with 0.001 uniform, losses weighted by 1 / (T p_t); "
        "uniform until every timestep has 10). Unbiased for every --loss_type; meant for vlb.",
        choices=list(TIMESTEP_SAMPLERS),
    )

    def __post_init__(self) -> None:
        if not 2 <= self.ddpm_num_steps <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"--ddpm_num_steps must lie in [2, {MAX_TRAIN_TIMESTEPS}], got {self.ddpm_num_steps}")
        if self.ddpm_num_inference_steps is not None and not 1 <= self.ddpm_num_inference_steps <= self.ddpm_num_steps:
            raise ValueError(f"--ddpm_num_inference_steps must lie in [1, {self.ddpm_num_steps}]")
        _check_number("vlb_weight", self.vlb_weight, low=0.0, include_low=True)
        if self.loss_type == "simple" and self.variance_type in ("learned", "learned_range"):
            raise ValueError(
                f"--loss_type simple does not train the variance of --variance_type {self.variance_type}; "
                "use --loss_type hybrid or vlb"
            )
        self._check_schedule_flags()
        try:  # the scheduler checks the schedule itself (betas in (0, 1]), here rather than after loading the data
            DDPMPosteriorScheduler(**self.scheduler_kwargs())
        except ValueError as err:
            raise ValueError(f"--beta_start / --beta_end / --ddpm_beta_schedule: {err}") from None

    def _check_schedule_flags(self) -> None:
        """The log-SNR ends are finite, bounded and ordered; flags of the other kind of schedule than the one chosen
        are refused rather than silently ignored (a flag is taken as given when it differs from its default)."""
        low, high = LOGSNR_RANGE
        for name in ("logsnr_max", "logsnr_min"):
            _check_number(name, getattr(self, name), low=low, high=high, include_low=True, include_high=True)
        if self.logsnr_max <= self.logsnr_min:
            raise ValueError(f"--logsnr_max ({self.logsnr_max:g}) must exceed --logsnr_min ({self.logsnr_min:g})")
        uses_logsnr = self.ddpm_beta_schedule == LINEAR_LOGSNR
        unused = ("beta_start", "beta_end") if uses_logsnr else ("logsnr_max", "logsnr_min")
        given = [name for name in unused if getattr(self, name) != _default(DDPMArguments, name)]
        if given:
            flags = " and ".join(f"--{name}" for name in given)
            if uses_logsnr:
                raise ValueError(
                    f"{flags}: not used by --ddpm_beta_schedule {LINEAR_LOGSNR}, whose ends are --logsnr_max and "
                    "--logsnr_min"
                )
            raise ValueError(
                f"{flags}: used by --ddpm_beta_schedule {LINEAR_LOGSNR} only, not {self.ddpm_beta_schedule}"
            )

    def scheduler_kwargs(self) -> dict[str, Any]:
        """The `DDPMPosteriorScheduler` arguments these settings describe.

        The log-SNR schedule is not a diffusers name: its betas go in as `trained_betas`, which diffusers'
        schedulers read before (and instead of) `beta_schedule`, so a saved folder loads in diffusers too; the config
        keeps the name for people and records the schedule's real first and last betas as `beta_start`/`beta_end`.
        """
        kwargs = {
            "num_train_timesteps": self.ddpm_num_steps,
            "beta_schedule": self.ddpm_beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "variance_type": self.variance_type,
            "prediction_type": self.prediction_type,
        }
        if self.ddpm_beta_schedule == LINEAR_LOGSNR:
            betas = linear_logsnr_betas(self.ddpm_num_steps, self.logsnr_max, self.logsnr_min)
            kwargs.update(beta_start=float(betas[0]), beta_end=float(betas[-1]), trained_betas=betas.tolist())
        return kwargs


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def _check_positive(name: str, value: int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"--{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _check_number(
    name: str, value: float, low: float, high: float = math.inf, include_low: bool = False, include_high: bool = False
) -> None:
    """A finite number in the interval (inclusive ends as said); NaN and infinities never pass."""
    above = low <= value if include_low else low < value
    below = value <= high if include_high else value < high
    if not (math.isfinite(value) and above and below):
        interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
        raise ValueError(f"--{name} must be a finite number in {interval}, got {value}")


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


def parse_training_arguments(family: str, argv: list[str] | None = None) -> tuple[TrainingArguments, Any]:
    """Parse the arguments of `scripts/train_<family>.py` (`family` a registered family: "ncsn" or "ddpm").

    `--config FILE` (YAML, or JSON for a `.json` name) supplies defaults; flags on the command line override it.

    Args:
        family (`str`): "ncsn" or "ddpm".
        argv (`list[str]`, *optional*): the arguments (default: `sys.argv[1:]`).

    Returns:
        `tuple[TrainingArguments, NCSNArguments | DDPMArguments]`

    Raises:
        `ValueError`: an unknown flag or config key, a value of the wrong type, or a failed check.
    """
    # imported here: the family registry imports this module for its argument classes
    from ..families import get_family

    argv = list(sys.argv[1:] if argv is None else argv)
    family_args = get_family(family).arguments_class
    parser = HfArgumentParser((TrainingArguments, family_args), description=f"Train a {family.upper()} pipeline.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="A YAML (or .json) mapping of argument names to values, used as defaults: flags given here win.",
    )
    config, argv = _split_config_flag(argv)
    if config is not None:
        argv = config_to_argv(config, (TrainingArguments, family_args)) + argv
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(describe_unknown_flags(unknown, parser))
    training, specific, *_ = parser.parse_args_into_dataclasses(args=argv)  # then the unused `config` namespace
    metric = training.keep_best_by
    if metric is not None and family not in EVAL_METRICS[metric]:
        accepted = [name for name, families in EVAL_METRICS.items() if family in families]
        raise ValueError(f"--keep_best_by {metric} is not measured for {family}; accepted values: {accepted}")
    return training, specific


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """The `--config FILE` (or `--config=FILE`) of `argv`, and the other arguments."""
    paths, rest, items = [], [], iter(argv)
    for item in items:
        if item == "--config":
            paths.append(next(items, None))
        elif item.startswith("--config="):
            paths.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    if len(paths) > 1:
        raise ValueError("--config is given more than once; pass one file")
    if paths and not paths[0]:
        raise ValueError("--config needs a YAML or JSON file")
    return (paths[0] if paths else None), rest
