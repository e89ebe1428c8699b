"""`evaluate`: load the pipeline and the data, run each measurement in turn, and write the report.

Each step is one small function; the measurements themselves live in `sample_quality`, `likelihood_report` and
`inception`, the printed table in `table`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..data import DIGITS
from ..json_utils import dumps
from ..likelihood.probability_flow import MAX_PROBES
from ..pipelines import DDPMPosteriorPipeline, NCSNPipeline
from ..plots import image_grid, save_png
from ..schedulers.validation import check_bool, check_positive_float, check_positive_int
from ..sharing.atomic import atomic_write_text
from .distributed import Shard, current_shard, evaluation_device, main_process_first
from .feature_classifier import (
    CLASSIFIER_SEED,
    FeatureClassifier,
    MissingLabelsError,
    default_classifier_resolution,
    load_images,
    load_or_train_classifier,
)
from .inception import INCEPTION_MISSING, inception_metrics, load_inception_extractor
from .likelihood_report import (
    BASELINE_MODELS,
    NCSN_HAS_NO_ELBO,
    likelihood_baselines_report,
    likelihood_report,
    ode_likelihood_report,
    plot_elbo_terms,
)
from .loading import default_output_dir, load_pipeline
from .sample_quality import (
    baseline_draw_rows,
    check_baseline_settings,
    check_sampling_arguments,
    generate_samples,
    sample_quality,
)

logger = logging.getLogger(__name__)

GRID_IMAGES = 64


@dataclass(frozen=True)
class _Settings:
    """What `evaluate` was asked to measure, passed to each step."""

    dataset_name: str | None
    train_data_dir: str | None
    image_column: str | None
    dataset_config_name: str | None
    dataset_cache_dir: str | None
    num_samples: int
    num_elbo_images: int | None
    elbo_strata: int
    batch_size: int
    seed: int
    sample_kwargs: dict[str, Any] = field(default_factory=dict)
    ode_likelihood: bool = True
    ode_probes: int = 1
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5
    classifier_resolution: int | None = None
    classifier_cache_dir: str | os.PathLike | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    baseline_draws: int = 5
    reference_bootstraps: int = 50
    shard: Shard = field(default_factory=Shard)

    @property
    def source(self) -> dict[str, str | None]:
        """The dataset arguments of `load_images`."""
        return {
            "dataset_name": self.dataset_name,
            "train_data_dir": self.train_data_dir,
            "image_column": self.image_column,
            "dataset_config_name": self.dataset_config_name,
            "dataset_cache_dir": self.dataset_cache_dir,
        }


@dataclass(frozen=True)
class _Data:
    """The real images of an evaluation, uint8 at the pipeline's size."""

    held_out: torch.Tensor
    train: torch.Tensor
    baseline: torch.Tensor  # as many training images as samples: the real-vs-real baseline (its draw 0)


def evaluate(
    pipeline_or_path: str | os.PathLike | DiffusionPipeline,
    *,
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    dataset_config_name: str | None = None,
    dataset_cache_dir: str | None = None,
    num_samples: int = 1000,
    num_elbo_images: int | None = None,
    elbo_strata: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    inception_weights: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    sample_kwargs: dict[str, Any] | None = None,
    ode_likelihood: bool = True,
    ode_probes: int = 1,
    ode_rtol: float = 1e-5,
    ode_atol: float = 1e-5,
    classifier_resolution: int | None = None,
    classifier_cache_dir: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    baseline_draws: int = 5,
    reference_bootstraps: int = 50,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate a pipeline on the held-out split of its dataset and write the report (see `hf_ddpm_ncsn.evaluation`).

    Args:
        pipeline_or_path (`str`, `os.PathLike` or `DiffusionPipeline`): an NCSN / DDPM pipeline, a saved folder
            (ours or diffusers' `DDPMPipeline`) or a Hub repo id.
        dataset_name (`str`, *optional*): the training data, as for training (default: the embedded digits).
        train_data_dir (`str`, *optional*): a local image folder instead.
        image_column (`str`, *optional*): the image column.
        dataset_config_name (`str`, *optional*): the dataset's configuration, as for training.
        dataset_cache_dir (`str`, *optional*): where `datasets` caches downloads (training's `--cache_dir`).
        num_samples (`int`, defaults to 1000): images to generate.
        num_elbo_images (`int`, *optional*): held-out images for the likelihood and its reference models (default:
            all of them).
        elbo_strata (`int`, defaults to 50): K of the stratified ELBO estimate; 0 skips it.
        batch_size (`int`, defaults to 256): images per sampling call, UNet inputs per ELBO call.
        seed (`int`, defaults to 0): seed of sampling, of the ELBO noise and of the baseline's training images.
        inception_weights (`str` or `os.PathLike`, *optional*): a local Inception feature extractor (see
            `load_inception_extractor`); without it FID is skipped, with a message saying so.
        output_dir (`str` or `os.PathLike`, *optional*): where to write `report.json`, `samples.png` and
            `elbo_terms.png` (default: `default_output_dir` for a path; nothing is written for a pipeline object).
        sample_kwargs (`dict`, *optional*): extra sampling arguments, e.g. `num_inference_steps`,
            `num_langevin_steps` (NCSN).
        ode_likelihood (`bool`, defaults to `True`): bits/dim through the probability-flow ODE (both families), on
            the likelihood's held-out images.
        ode_probes (`int`, defaults to 1): Hutchinson probes per image of the ODE.
        ode_rtol (`float`, defaults to 1e-5), ode_atol (`float`, defaults to 1e-5): the ODE solver's tolerances.
        classifier_resolution (`int`, *optional*): input size of the feature classifier (default: 8 for the digits,
            their native size; otherwise the pipeline's sample size, at most 32).
        classifier_cache_dir (`str` or `os.PathLike`, *optional*): the classifier cache (see
            `hf_ddpm_ncsn.evaluation.feature_classifier`).
        kid_subsets (`int`, defaults to 100): subsets of the kernel distances.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distances.
        baseline_draws (`int`, defaults to 5): draws of as many training images as samples for the classifier
            metrics' real-vs-real baseline (`baseline_draw_rows`; draw 0 is the single draw of before, and the
            `*_real_baseline` numbers are still its own); the report adds their mean and spread and the samples'
            Fréchet distance as a ratio to that mean (`sample_quality.baseline_spread`).
        reference_bootstraps (`int`, defaults to 50): bootstrap resamples of the held-out images for the spread
            that the fixed reference puts on the Fréchet distances (0 skips it).
        device (`str` or `torch.device`, *optional*): where the networks run (sampling and likelihoods; the
            classifier metrics are computed on the CPU). Default: a loaded pipeline goes to this process's
            accelerate device (under `accelerate launch` on GPUs each process's own GPU, else the GPU when there is
            one, else the CPU); a pipeline object stays where it is.

    Under `accelerate launch` the processes share the sampling, the ELBO, its stratified estimate and the ODE
    likelihood (`hf_ddpm_ncsn.evaluation.distributed`: the same numbers for any number of processes), every process
    returns the whole report, and the main process alone writes the files.

    Returns:
        `dict`: the report; `report["model_card_metrics"]` is a flat dict of the headline numbers.
    """
    _check_counts(num_samples, batch_size, elbo_strata, num_elbo_images)
    check_baseline_settings(baseline_draws, reference_bootstraps)
    _check_ode_settings(ode_likelihood, ode_probes, ode_rtol, ode_atol)
    target = evaluation_device(device)
    shard = current_shard()
    shard.check_chunks(f"--num_samples {num_samples} samples", num_samples, batch_size)
    # loaded first: a wrong path fails before minutes of sampling
    extractor = None if inception_weights is None else load_inception_extractor(inception_weights)
    started = time.perf_counter()
    # a Hub download once, by the main process, before the others read its cache
    pipe = main_process_first(shard, lambda: load_pipeline(pipeline_or_path))
    if device is not None or not isinstance(pipeline_or_path, DiffusionPipeline):
        pipe = pipe.to(target)
    settings = _Settings(
        dataset_name=dataset_name,
        train_data_dir=train_data_dir,
        image_column=image_column,
        dataset_config_name=dataset_config_name,
        dataset_cache_dir=dataset_cache_dir,
        num_samples=num_samples,
        num_elbo_images=num_elbo_images,
        elbo_strata=elbo_strata,
        batch_size=batch_size,
        seed=seed,
        sample_kwargs=dict(sample_kwargs or {}),
        ode_likelihood=ode_likelihood,
        ode_probes=ode_probes,
        ode_rtol=ode_rtol,
        ode_atol=ode_atol,
        classifier_resolution=classifier_resolution,
        classifier_cache_dir=classifier_cache_dir,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        baseline_draws=baseline_draws,
        reference_bootstraps=reference_bootstraps,
        shard=shard,
    )
    check_sampling_arguments(pipe, batch_size, settings.sample_kwargs)  # before the data, the classifier, the ELBO
    if output_dir is None and not isinstance(pipeline_or_path, DiffusionPipeline):
        output_dir = default_output_dir(pipeline_or_path)
    report, samples = _measure(pipeline_or_path, pipe, settings, extractor, inception_weights)
    report["timings"]["total"] = time.perf_counter() - started
    report["model_card_metrics"] = model_card_metrics(report)
    if output_dir is not None and shard.is_main:
        report["files"] = write_outputs(report, samples, output_dir)
    return report


def _check_counts(num_samples: int, batch_size: int, elbo_strata: int, num_elbo_images: int | None) -> None:
    check_positive_int("num_samples", num_samples, minimum=2)
    check_positive_int("batch_size", batch_size)
    check_positive_int("elbo_strata", elbo_strata, minimum=0)
    if num_elbo_images is not None:
        check_positive_int("num_elbo_images", num_elbo_images)


def _check_ode_settings(ode_likelihood: bool, ode_probes: int, ode_rtol: float, ode_atol: float) -> None:
    check_bool("ode_likelihood", ode_likelihood)
    check_positive_int("ode_probes", ode_probes, maximum=MAX_PROBES)
    check_positive_float("ode_rtol", ode_rtol)
    check_positive_float("ode_atol", ode_atol)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block took as `timings[name]`."""
    tick = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - tick


def _measure(
    pipeline_or_path: str | os.PathLike | DiffusionPipeline,
    pipe: DDPMPosteriorPipeline | NCSNPipeline,
    settings: _Settings,
    extractor: torch.nn.Module | None,
    inception_weights: str | os.PathLike | None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Every measurement of `evaluate`, in order; returns the report (without the totals) and the samples."""
    timings: dict[str, float] = {}
    resolution, channels = _image_shape(pipe)
    with _timed(timings, "load_data"):
        data = _load_data(settings, resolution, channels)
    likelihood_images = data.held_out[: settings.num_elbo_images or len(data.held_out)]
    if settings.ode_likelihood or callable(getattr(pipe, "elbo", None)):
        count = len(likelihood_images)
        settings.shard.check_chunks(f"{count} held-out images (--num_elbo_images)", count, settings.batch_size)
    report = _header(pipeline_or_path, pipe, settings, data)
    with _timed(timings, "classifier"):
        classifier_resolution = settings.classifier_resolution or default_classifier_resolution(
            settings.dataset_name, settings.train_data_dir, resolution
        )
        # the main process trains and caches it, the others load it
        classifier, report["classifier"] = main_process_first(
            settings.shard, lambda: _classifier(settings, classifier_resolution, channels)
        )
    if settings.ode_likelihood:
        with _timed(timings, "ode_likelihood"):
            report["ode_likelihood"] = _ode_likelihood(pipe, likelihood_images, settings)
    if callable(getattr(pipe, "elbo", None)):  # a latent-variable family: it has a bound
        with _timed(timings, "likelihood"):
            report["likelihood"] = _likelihood(pipe, likelihood_images, settings)
    else:
        report["likelihood"] = {"skipped": NCSN_HAS_NO_ELBO}
    # for every family: a bits/dim is only read against these references, on the same held-out images
    with _timed(timings, "likelihood_baselines"):
        report["likelihood_baselines"] = likelihood_baselines_report(data.train, likelihood_images)
    with _timed(timings, "sampling"):
        logger.info("sampling %d images", settings.num_samples)
        samples = generate_samples(
            pipe, settings.num_samples, settings.batch_size, settings.seed, settings.shard, **settings.sample_kwargs
        )
    with _timed(timings, "sample_quality"):
        report["sample_quality"] = _sample_quality(samples, data, classifier, settings)
    if extractor is None:
        report["inception"] = {"skipped": INCEPTION_MISSING}
        logger.warning(INCEPTION_MISSING)
    else:
        with _timed(timings, "inception"):
            report["inception"] = _inception(extractor, inception_weights, samples, data, settings)
    report["timings"] = timings
    return report, samples


def _image_shape(pipe: DDPMPosteriorPipeline | NCSNPipeline) -> tuple[int, int]:
    """The resolution and channels of the pipeline's images."""
    size = pipe.unet.config.sample_size
    return (size if isinstance(size, int) else size[0]), pipe.unet.config.in_channels


def _load_data(settings: _Settings, resolution: int, channels: int) -> _Data:
    """The held-out and training images at the pipeline's size, and the baseline's training images."""
    logger.info("loading the held-out and training images at %d px", resolution)
    held_out, _ = load_images(**settings.source, split="test", resolution=resolution, channels=channels)
    train, _ = load_images(**settings.source, split="train", resolution=resolution, channels=channels)
    (baseline_rows,) = baseline_draw_rows(len(train), settings.num_samples, 1, settings.seed)
    return _Data(held_out=held_out, train=train, baseline=train[baseline_rows])


def _header(
    pipeline_or_path: str | os.PathLike | DiffusionPipeline,
    pipe: DDPMPosteriorPipeline | NCSNPipeline,
    settings: _Settings,
    data: _Data,
) -> dict[str, Any]:
    """The report's first entries: what was evaluated, on which data, how many images."""
    return {
        "pipeline": str(pipeline_or_path) if not isinstance(pipeline_or_path, DiffusionPipeline) else None,
        "pipeline_class": type(pipe).__name__,
        "dataset": settings.train_data_dir or settings.dataset_name or DIGITS,
        "dataset_config_name": settings.dataset_config_name,
        "device": str(pipe.device),
        "seed": settings.seed,
        "num_processes": settings.shard.world_size,
        "sample_kwargs": dict(settings.sample_kwargs),
        "counts": {
            "samples": settings.num_samples,
            "held_out": len(data.held_out),
            "train": len(data.train),
            "baseline_train_images": len(data.baseline),
        },
    }


def _classifier(
    settings: _Settings, resolution: int, channels: int
) -> tuple[FeatureClassifier | None, dict[str, Any]]:
    """The dataset's feature classifier and its report section, or None and why it is missing."""
    try:
        classifier = load_or_train_classifier(
            **settings.source,
            resolution=resolution,
            channels=channels,
            # fixed, not the evaluation seed: every evaluation of a dataset measures in the same feature space
            seed=CLASSIFIER_SEED,
            cache_dir=settings.classifier_cache_dir,
        )
    except MissingLabelsError as err:
        logger.warning("classifier metrics skipped: %s", err)
        return None, {"skipped": str(err)}
    keys = ("held_out_accuracy", "train_seconds", "num_train_images", "num_held_out_images", "cache_file")
    section = {key: classifier.info[key] for key in keys}
    section.update(resolution=resolution, feature_dim=classifier.config["feature_dim"], seed=CLASSIFIER_SEED)
    return classifier, section


def _ode_likelihood(
    pipe: DDPMPosteriorPipeline | NCSNPipeline, images: torch.Tensor, settings: _Settings
) -> dict[str, Any]:
    logger.info("bits/dim of %d held-out images through the probability-flow ODE", len(images))
    return ode_likelihood_report(
        pipe,
        images,
        settings.ode_probes,
        settings.ode_rtol,
        settings.ode_atol,
        settings.batch_size,
        settings.seed,
        settings.shard,
    )


def _likelihood(pipe: DDPMPosteriorPipeline, images: torch.Tensor, settings: _Settings) -> dict[str, Any]:
    logger.info("bits/dim of %d held-out images (every ELBO term, then stratified)", len(images))
    return likelihood_report(pipe, images, settings.elbo_strata, settings.batch_size, settings.seed, settings.shard)


def _sample_quality(
    samples: torch.Tensor, data: _Data, classifier: FeatureClassifier | None, settings: _Settings
) -> dict[str, Any]:
    return sample_quality(
        samples,
        data.held_out,
        data.baseline,
        classifier,
        train=data.train,
        kid_subsets=settings.kid_subsets,
        kid_subset_size=settings.kid_subset_size,
        seed=settings.seed,
        batch_size=settings.batch_size,
        baseline_draws=settings.baseline_draws,
        reference_bootstraps=settings.reference_bootstraps,
    )


def _inception(
    extractor: torch.nn.Module,
    inception_weights: str | os.PathLike,
    samples: torch.Tensor,
    data: _Data,
    settings: _Settings,
) -> dict[str, Any]:
    metrics = inception_metrics(
        extractor, samples, data.held_out, data.baseline, settings.kid_subsets, settings.kid_subset_size, settings.seed
    )
    return {"feature_extractor": str(inception_weights), **metrics}


def model_card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report as a flat name -> float dict, for the model card.

    Args:
        report (`dict`): a report of `evaluate`.
    """
    elbo, quality = report.get("likelihood", {}), report.get("sample_quality", {})
    baselines = report.get("likelihood_baselines", {})
    metrics = {
        "bits_per_dim_ode": report.get("ode_likelihood", {}).get("bits_per_dim"),
        "bits_per_dim": elbo.get("bits_per_dim"),
        "bits_per_dim_stratified": elbo.get("stratified", {}).get("bits_per_dim"),
        **{
            f"bits_per_dim_baseline_{model}": baselines.get(model, {}).get("bits_per_dim") for model in BASELINE_MODELS
        },
        "classifier_held_out_accuracy": report.get("classifier", {}).get("held_out_accuracy"),
        **{
            name: quality.get(name)
            for name in (
                "classifier_frechet_distance",
                "classifier_frechet_distance_real_baseline",
                "classifier_frechet_distance_real_baseline_mean",
                "classifier_frechet_distance_real_baseline_std",
                "classifier_frechet_distance_ratio",
                "classifier_frechet_distance_ratio_std",
                "classifier_kid",
                "classifier_kid_real_baseline",
                "class_coverage",
                "class_coverage_real_baseline",
            )
        },
        "nearest_train_distance_ratio": quality.get("nearest_train_distance", {}).get("ratio", {}).get("median"),
        "inception_fid": report.get("inception", {}).get("fid"),
        "inception_fid_real_baseline": report.get("inception", {}).get("fid_real_baseline"),
    }
    return {name: float(value) for name, value in metrics.items() if value is not None}


def write_outputs(report: dict[str, Any], samples: torch.Tensor, output_dir: str | os.PathLike) -> dict[str, str]:
    """Write samples.png, elbo_terms.png (when there are ELBO terms) and report.json (last), each atomically.

    Args:
        report (`dict`): a report of `evaluate`.
        samples (`torch.Tensor`): uint8 (N, C, H, W) samples; the first `GRID_IMAGES` go into samples.png.
        output_dir (`str` or `os.PathLike`): the folder to write into (created if missing).

    Returns:
        `dict`: name -> path of each file written.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"report": str(folder / "report.json"), "samples": str(folder / "samples.png")}
    save_png(image_grid(samples[:GRID_IMAGES]), files["samples"])
    terms = report["likelihood"].get("terms_mean_per_timestep")
    if terms is not None:
        files["elbo_terms"] = str(folder / "elbo_terms.png")
        plot_elbo_terms(terms, files["elbo_terms"])
    atomic_write_text(files["report"], dumps({**report, "files": files}, indent=2))
    return files
