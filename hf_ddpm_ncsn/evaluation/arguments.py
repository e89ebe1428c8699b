"""Command-line arguments of `scripts/evaluate.py`, parsed with `transformers.HfArgumentParser` as the training
scripts' are: every flag is a field of `EvaluationArguments`, checked when it is parsed, and a bad value or an
unknown flag is an error naming the flag (exit code 2) before anything is loaded."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser

from ..argument_errors import describe_unknown_flags
from ..data import DIGITS
from .distributed import evaluation_device
from .loading import default_output_dir

# owner/name or name, as the Hub spells repo ids
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# the smallest accepted value of each count
_MINIMUMS = {
    "num_samples": 2,
    "num_elbo_images": 1,
    "elbo_strata": 0,
    "batch_size": 1,
    "num_inference_steps": 1,
    "num_langevin_steps": 1,
    "num_ode_steps": 0,
    "ode_probes": 1,
    "baseline_draws": 1,
    "reference_bootstraps": 0,
}


def _arg(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class EvaluationArguments:
    """What to evaluate, on which data, with how many images (see `hf_ddpm_ncsn.evaluation.evaluate`)."""

    pipeline: str = field(
        metadata={
            "help": "A saved NCSNPipeline / DDPMPosteriorPipeline folder, a diffusers DDPMPipeline folder, or a Hub "
            "repo id."
        }
    )
    dataset_name: str | None = _arg(
        None, "The training dataset (a datasets name); default: the embedded scikit-learn digits."
    )
    train_data_dir: str | None = _arg(
        None, "A local image folder instead (one sub-folder per class gives the labels the classifier metrics need)."
    )
    image_column: str | None = _arg(None, "The image column (default: the first image feature).")
    dataset_config_name: str | None = _arg(None, "The dataset's configuration name, as for training.")
    cache_dir: str | None = _arg(None, "Where `datasets` caches downloads, as for training.")
    num_samples: int = _arg(1000, "Images to generate (at least 2).")
    num_elbo_images: int | None = _arg(
        None,
        "Held-out images whose bits/dim are computed, the DDPM's and the reference models' (default: all of them, "
        "180 for the digits).",
    )
    elbo_strata: int = _arg(50, "K of the stratified ELBO estimate, one timestep per stratum and image (0 skips it).")
    batch_size: int = _arg(256, "Images per sampling call, UNet inputs per ELBO call.")
    seed: int = _arg(0, "Seed of sampling, ELBO noise and the baseline images.")
    baseline_draws: int = _arg(
        5,
        "Draws of as many training images as samples for the real-vs-real baseline of the classifier metrics: the "
        "report gives their mean and spread and the Fréchet distance as a ratio to that mean (draw 0 is the single "
        "baseline of before; 1 keeps only it).",
    )
    reference_bootstraps: int = _arg(
        50,
        "Bootstrap resamples of the held-out images: the spread that the fixed reference puts on the Fréchet "
        "distances and their ratio (0 skips it).",
    )
    inception_weights: str | None = _arg(
        None,
        "A local TorchScript Inception feature extractor (float images in [0, 255], (N, 3, 299, 299) -> (N, 2048)) "
        "to also compute FID and KID; without it they are skipped, with a note in the report.",
    )
    device: str | None = _arg(
        None,
        "Where the networks run: cpu, cuda, cuda:<index> or mps (default: this process's accelerate device, its own "
        "GPU under accelerate launch, else the GPU when there is one, else the CPU).",
    )
    output_dir: str | None = _arg(
        None,
        "Where report.json, samples.png and elbo_terms.png go (default: <pipeline>/eval for a folder, eval-<name> "
        "for a Hub repo id).",
    )
    num_inference_steps: int | None = _arg(
        None, "Sampling steps (DDPM: a respaced chain; NCSN: noise levels visited); default: all trained ones."
    )
    ode_likelihood: bool = _arg(
        True, "Bits/dim through the probability-flow ODE (both families; --no_ode_likelihood skips it)."
    )
    ode_probes: int = _arg(1, "Hutchinson probes per image of the ODE likelihood.")
    ode_rtol: float = _arg(1e-5, "Relative tolerance of the ODE solver (dopri5).")
    ode_atol: float = _arg(1e-5, "Absolute tolerance of the ODE solver (dopri5).")
    num_langevin_steps: int | None = _arg(
        None,
        "Langevin updates per noise level: NCSN's chain (default: the scheduler's), or DDPM with --sampler langevin.",
    )
    sampler: str | None = _arg(
        None,
        "The pipeline's sampler: NCSN langevin|pc|ode|ode_langevin, DDPM ancestral|pc|langevin|ode|ode_langevin "
        "(default: langevin / ancestral).",
    )
    snr: float | None = _arg(None, "sampler pc only: the corrector's signal-to-noise ratio (default 0.16).")
    num_corrector_steps: int | None = _arg(None, "sampler pc only: Langevin corrector updates per level (default 1).")
    ode_method: str | None = _arg(
        None, "sampler ode only: ddim|heun|dpmpp_2m|euler|midpoint|rk4|dopri5|bosh3|adaptive_heun."
    )
    ode_time_spacing: str | None = _arg(None, "sampler ode only: levels (default) or logsnr (uniform in log-SNR).")
    num_ode_steps: int | None = _arg(
        None, "sampler ode_langevin only: Heun ODE steps over the noisiest levels before Langevin dynamics."
    )
    step_size: float | None = _arg(
        None, "Langevin step eps (eta = eps sigma^2 / sigma_min^2): NCSN's chain, or --sampler langevin|ode_langevin."
    )

    def __post_init__(self) -> None:
        # in the order of the old argparse checks: the pipeline is named first when several values are wrong
        _check_pipeline(self.pipeline)
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ValueError("argument --train_data_dir: not allowed with argument --dataset_name")
        if self.dataset_config_name is not None and self.dataset_name in (None, DIGITS):
            raise ValueError("argument --dataset_config_name: needs --dataset_name (a datasets name with configs)")
        if self.train_data_dir is not None and not os.path.isdir(self.train_data_dir):
            raise ValueError(f"argument --train_data_dir: {self.train_data_dir} is not an existing directory")
        for name, minimum in _MINIMUMS.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"argument --{name}: must be an integer >= {minimum}, got {value}")
        if self.device is not None:
            try:
                evaluation_device(self.device)
            except ValueError as err:
                raise ValueError(f"argument --device: {err}") from None
        for name in ("ode_rtol", "ode_atol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"argument --{name}: must be a positive number, got {getattr(self, name)}")
        if self.inception_weights is not None and not os.path.isfile(self.inception_weights):
            raise ValueError(
                f"argument --inception_weights: {self.inception_weights} does not exist (expected a TorchScript "
                "feature-extractor file)"
            )

    def sample_kwargs(self) -> dict[str, int | float | str]:
        """The sampling arguments given on the command line (the others keep the pipeline's defaults)."""
        sampling = {
            "num_inference_steps": self.num_inference_steps,
            "num_langevin_steps": self.num_langevin_steps,
            "sampler": self.sampler,
            "snr": self.snr,
            "num_corrector_steps": self.num_corrector_steps,
            "ode_method": self.ode_method,
            "num_ode_steps": self.num_ode_steps,
            "ode_time_spacing": self.ode_time_spacing,
            "step_size": self.step_size,
        }
        return {name: value for name, value in sampling.items() if value is not None}

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `evaluate(self.pipeline, ...)`."""
        return {
            "dataset_name": self.dataset_name,
            "train_data_dir": self.train_data_dir,
            "image_column": self.image_column,
            "dataset_config_name": self.dataset_config_name,
            "dataset_cache_dir": self.cache_dir,
            "num_samples": self.num_samples,
            "num_elbo_images": self.num_elbo_images,
            "elbo_strata": self.elbo_strata,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "baseline_draws": self.baseline_draws,
            "reference_bootstraps": self.reference_bootstraps,
            "device": self.device,
            "inception_weights": self.inception_weights,
            "output_dir": self.output_dir or default_output_dir(self.pipeline),
            "sample_kwargs": self.sample_kwargs(),
            "ode_likelihood": self.ode_likelihood,
            "ode_probes": self.ode_probes,
            "ode_rtol": self.ode_rtol,
            "ode_atol": self.ode_atol,
        }


def _check_pipeline(text: str) -> None:
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "model_index.json")):
            raise ValueError(
                f"argument --pipeline: {text} has no model_index.json: it is not a saved diffusers pipeline"
            )
        return
    if os.path.exists(text) or text.startswith((".", "/", "~")) or not _REPO_ID.match(text):
        raise ValueError(f"argument --pipeline: {text} is neither an existing pipeline folder nor a Hub repo id")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, the description (the script's docstring) as it is written."""


def parse_evaluation_arguments(argv: list[str] | None = None, description: str | None = None) -> EvaluationArguments:
    """Parse the arguments of `scripts/evaluate.py`; a bad value or an unknown flag exits with code 2.

    Args:
        argv (`list[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        description (`str`, *optional*): the text `--help` shows above the flags.
    """
    parser = HfArgumentParser(EvaluationArguments, description=description, formatter_class=_HelpFormatter)
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(describe_unknown_flags(unknown, parser))
    try:
        (arguments,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as err:  # raised by EvaluationArguments.__post_init__, naming the flag
        parser.error(str(err))
    return arguments
