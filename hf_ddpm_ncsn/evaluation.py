"""Evaluate a trained NCSN or DDPM pipeline offline: likelihood, sample quality, memorisation, and a report.

`evaluate` runs everything and writes `report.json`, `samples.png` and (DDPM) `elbo_terms.png`:

- **Likelihood** (DDPM only; NCSN has no ELBO): test-set bits/dim from every term of the bound
  (`DDPMPosteriorPipeline.elbo`), and the unbiased stratified estimate of `hf_ddpm_ncsn.stratified_elbo`
  (log-spaced strata), which needs K instead of T network calls per image.
- **Sample quality without a network**: a Fréchet distance and a kernel distance (KID's estimator) in the feature
  space of a classifier trained on the dataset's train split (`hf_ddpm_ncsn.feature_classifier`), and the class
  coverage of the samples. These are not FID: they are named `classifier_*`, and each one is reported beside its
  **real-vs-real baseline**, the same number for as many training images in place of the samples, against the same
  held-out images. A model is as good as real data by this measure when it reaches the baseline.
- **Memorisation**: the pixel distance from each sample to its nearest training image, beside the same distance for
  held-out real images; a ratio well below 1 means the model reproduces training images.
- **FID / KID with Inception**, only from a local feature-extractor file (`inception_weights`).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline

from .atomic import atomic_write_text
from .data import DIGITS
from .feature_classifier import FeatureClassifier, MissingLabelsError, load_images, load_or_train_classifier
from .folder_checks import pipeline_class_name
from .json_utils import dumps
from .metrics import (
    class_coverage,
    distance_summary,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    nearest_neighbour_distances,
)
from .pipelines import DDPMPosteriorPipeline, NCSNPipeline
from .plots import image_grid, line_plot
from .schedulers.validation import check_positive_int
from .stratified_elbo import stratified_elbo_bpd

logger = logging.getLogger(__name__)

INCEPTION_MISSING = (
    "FID needs Inception weights that no installed package ships offline; pass --inception_weights PATH "
    "(a TorchScript feature extractor) to compute it."
)
NCSN_HAS_NO_ELBO = (
    "NCSN has no ELBO: it is a score model sampled by annealed Langevin dynamics, not a latent-variable model, so "
    "it assigns no likelihood and no bits/dim is reported."
)
INCEPTION_SIZE = 299
CLASSIFIER_SEED = 0
GRID_IMAGES = 64
# arguments of a pipeline call that the evaluation sets itself
_RESERVED_CALL_ARGUMENTS = ("batch_size", "generator", "output_type", "return_dict")


# ----------------------------------------------------------------------------------------------------------------
# Loading
def load_pipeline(pipeline_or_path: str | os.PathLike | DiffusionPipeline) -> DDPMPosteriorPipeline | NCSNPipeline:
    """An NCSN or DDPM pipeline from an object, a saved folder or a Hub repo id.

    Folders are dispatched on the `_class_name` of their `model_index.json`: `NCSNPipeline`, or
    `DDPMPosteriorPipeline` / diffusers' `DDPMPipeline` (loaded as a `DDPMPosteriorPipeline`).

    Args:
        pipeline_or_path (`str`, `os.PathLike` or `DiffusionPipeline`): the pipeline or where it is saved.
    """
    if isinstance(pipeline_or_path, NCSNPipeline | DDPMPosteriorPipeline):
        return pipeline_or_path
    if isinstance(pipeline_or_path, DiffusionPipeline):
        raise TypeError(
            f"cannot evaluate a {type(pipeline_or_path).__name__}: pass an NCSNPipeline or a DDPMPosteriorPipeline, "
            "or the folder / repo id of a saved one (a diffusers DDPMPipeline folder loads as a DDPMPosteriorPipeline)"
        )
    path = str(pipeline_or_path)
    folder = path if os.path.isdir(path) else _download(path)
    name = pipeline_class_name(folder)
    for pipeline_class in (DDPMPosteriorPipeline, NCSNPipeline):
        if name in pipeline_class.loadable_class_names:
            return pipeline_class.from_pretrained(folder)
    raise ValueError(
        f"{path} holds a {name!r} pipeline; the evaluation handles NCSNPipeline, DDPMPosteriorPipeline and "
        "diffusers' DDPMPipeline"
    )


def _download(repo_id: str) -> str:
    try:
        return DiffusionPipeline.download(repo_id)
    except OSError as err:
        raise OSError(f"{repo_id!r} is not a local folder, and fetching it as a Hub repo id failed: {err}") from err


def default_output_dir(pipeline_path: str | os.PathLike) -> str:
    """`<folder>/eval` for a local folder, `eval-<name>` (in the working directory) for a Hub repo id."""
    path = str(pipeline_path)
    if os.path.isdir(path):
        return os.path.join(path, "eval")
    return f"eval-{path.rstrip('/').split('/')[-1]}"


def load_inception_extractor(inception_weights: str | os.PathLike) -> torch.nn.Module:
    """A local Inception feature extractor: TorchScript (`torch.jit.save`) or a `torch.export` archive (`.pt2`).

    The module must map float images in [0, 255] of shape (N, 3, 299, 299) to pool features (N, 2048), e.g. an
    export of the `pt_inception-2015-12-05` network. NVIDIA's StyleGAN2-ADA `inception-2015-12-05.pt` works as
    it is: `return_features=True` is passed when the module's forward accepts it.

    Args:
        inception_weights (`str` or `os.PathLike`): path of the file.

    Raises:
        `FileNotFoundError`: no such file.
    """
    path = Path(inception_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"inception_weights={str(inception_weights)!r} does not exist: pass the path of a local TorchScript "
            "feature extractor (float images in [0, 255], (N, 3, 299, 299) -> (N, 2048))"
        )
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        # TorchScript is deprecated in torch 2.x, but it is the format the Inception ports are published in
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


# ----------------------------------------------------------------------------------------------------------------
# Images
def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of float images (N, C, H, W) to (N, C, resolution, resolution), antialiased when shrinking."""
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    shrinking = min(images.shape[-2:]) > resolution
    return torch.nn.functional.interpolate(
        images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking
    )


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float64 in [0, 1]."""
    return images.double() / 255


def generate_samples(
    pipe: DiffusionPipeline, num_samples: int, batch_size: int, seed: int = 0, **call_kwargs
) -> torch.Tensor:
    """`num_samples` images from `pipe`, in batches, from one CPU generator seeded with `seed`.

    Returns:
        `torch.Tensor`: uint8 (N, C, H, W), i.e. the 8-bit images a saved PNG would hold.
    """
    check_sampling_arguments(pipe, batch_size, call_kwargs)
    generator = torch.Generator().manual_seed(seed)
    batches = [
        pipe(
            batch_size=min(batch_size, num_samples - start), generator=generator, output_type="np", **call_kwargs
        ).images
        for start in range(0, num_samples, batch_size)
    ]
    pixels = torch.from_numpy(np.concatenate(batches)).permute(0, 3, 1, 2)
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8)


def check_sampling_arguments(pipe: DiffusionPipeline, batch_size: int, call_kwargs: dict[str, Any]) -> None:
    """Raise a `ValueError` for a sampling argument the pipeline does not take or would refuse, before any work."""
    accepted = set(inspect.signature(pipe.__call__).parameters) - set(_RESERVED_CALL_ARGUMENTS)
    unknown = sorted(set(call_kwargs) - accepted)
    if unknown:
        raise ValueError(f"{type(pipe).__name__} does not take {unknown}; its sampling arguments: {sorted(accepted)}")
    pipe.check_inputs(batch_size=batch_size, **call_kwargs)


def sample_grid(images: torch.Tensor, max_images: int = GRID_IMAGES) -> PIL.Image.Image:
    """A legible grid (`plots.image_grid`) of the first `max_images` uint8 images (N, C, H, W)."""
    arrays = images[:max_images].permute(0, 2, 3, 1).numpy()
    return image_grid([PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays])


# ----------------------------------------------------------------------------------------------------------------
# Sample quality
@torch.no_grad()
def classifier_outputs(
    classifier: FeatureClassifier, images: torch.Tensor, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) and class probabilities (N, K) of uint8 images, resized to the classifier's resolution."""
    features, probabilities = [], []
    for batch in images.split(batch_size):
        inputs = resize_images(to_unit_interval(batch).float(), classifier.config["resolution"])
        batch_features, batch_probabilities = classifier.features_and_probabilities(inputs)
        features.append(batch_features.double().numpy())
        probabilities.append(batch_probabilities.double().numpy())
    return np.concatenate(features), np.concatenate(probabilities)


def feature_distances(
    sample_features: np.ndarray,
    reference_features: np.ndarray,
    baseline_features: np.ndarray,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Fréchet and kernel distances of samples to reference (held-out) features, beside the real baseline's.

    Returns:
        `dict`: `frechet_distance`, `frechet_distance_real_baseline`, `kid`, `kid_std`, `kid_real_baseline`,
        `kid_real_baseline_std`.
    """
    reference = feature_statistics(reference_features)
    kid = kernel_inception_distance(sample_features, reference_features, kid_subsets, kid_subset_size, seed)
    kid_baseline = kernel_inception_distance(baseline_features, reference_features, kid_subsets, kid_subset_size, seed)
    return {
        "frechet_distance": frechet_distance(*feature_statistics(sample_features), *reference),
        "frechet_distance_real_baseline": frechet_distance(*feature_statistics(baseline_features), *reference),
        "kid": kid[0],
        "kid_std": kid[1],
        "kid_real_baseline": kid_baseline[0],
        "kid_real_baseline_std": kid_baseline[1],
    }


def sample_quality(
    samples: torch.Tensor,
    reference: torch.Tensor,
    baseline: torch.Tensor,
    classifier: FeatureClassifier | None = None,
    *,
    train: torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Sample-quality numbers of a set of images, each beside its real-data baseline.

    Works on any images (generated or not), which is how the evaluation itself is tested: real images score near
    the baseline, noise far from it.

    Args:
        samples (`torch.Tensor`): uint8 (N, C, H, W) images to evaluate.
        reference (`torch.Tensor`): uint8 held-out real images, what the samples are compared with.
        baseline (`torch.Tensor`): uint8 real images from the train split, as many as the samples: the real-vs-real
            baseline compares them with `reference` exactly as the samples are compared.
        classifier (`FeatureClassifier`, *optional*): the feature network; without it the classifier metrics are
            skipped.
        train (`torch.Tensor`, *optional*): uint8 training images for the nearest-neighbour (memorisation) check.
        kid_subsets (`int`, defaults to 100): subsets of the kernel distance.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distance (capped by the set sizes).
        seed (`int`, defaults to 0): seed of the kernel distance's subsets.
        batch_size (`int`, defaults to 256): images per classifier call.

    Returns:
        `dict`: `classifier_frechet_distance`, `classifier_kid` (and `_std`), `class_coverage` (normalised entropy of
        the mean predicted class distribution), each with a `_real_baseline` twin; `class_coverage_details`; and,
        with `train`, `nearest_train_distance` (summaries for the samples and the held-out images, and their ratio).
    """
    report: dict[str, Any] = {}
    if classifier is not None:
        sample_features, sample_probabilities = classifier_outputs(classifier, samples, batch_size)
        reference_features, reference_probabilities = classifier_outputs(classifier, reference, batch_size)
        baseline_features, _ = classifier_outputs(classifier, baseline, batch_size)
        distances = feature_distances(
            sample_features, reference_features, baseline_features, kid_subsets, kid_subset_size, seed
        )
        report.update({f"classifier_{name}": value for name, value in distances.items()})
        coverage = class_coverage(sample_probabilities)
        reference_coverage = class_coverage(reference_probabilities)
        report["class_coverage"] = coverage["normalized_coverage"]
        report["class_coverage_real_baseline"] = reference_coverage["normalized_coverage"]
        report["class_coverage_details"] = {"samples": coverage, "held_out": reference_coverage}
    if train is not None:
        report["nearest_train_distance"] = memorisation(samples, reference, train)
    return report


def memorisation(samples: torch.Tensor, reference: torch.Tensor, train: torch.Tensor) -> dict[str, Any]:
    """Nearest-training-image distances (pixels in [0, 1]) of samples and of held-out images, and their ratios.

    Held-out images are new draws from the data distribution: samples whose distances are much smaller (ratio << 1)
    are copies of training images rather than new ones.
    """
    samples_summary = distance_summary(nearest_neighbour_distances(to_unit_interval(samples), to_unit_interval(train)))
    held_out_summary = distance_summary(
        nearest_neighbour_distances(to_unit_interval(reference), to_unit_interval(train))
    )
    return {
        "samples": samples_summary,
        "held_out": held_out_summary,
        "ratio": {name: _ratio(value, held_out_summary[name]) for name, value in samples_summary.items()},
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


# ----------------------------------------------------------------------------------------------------------------
# Likelihood
def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float | None]:
    """Mean over images and its standard error (None for a single image: JSON has no NaN)."""
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else None
    return values.mean().item(), stderr


def likelihood_report(
    pipe: DDPMPosteriorPipeline,
    images: torch.Tensor,
    num_strata: int = 50,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Test-set bits/dim of a DDPM: the full ELBO and, with `num_strata` > 0, the stratified estimate.

    Args:
        pipe (`DDPMPosteriorPipeline`): the model.
        images (`torch.Tensor`): uint8 (B, C, H, W) held-out images.
        num_strata (`int`, defaults to 50): K of the stratified estimate (capped at T); 0 skips it.
        batch_size (`int`, defaults to 256): UNet inputs per call.
        seed (`int`, defaults to 0): seed of the noise.

    Returns:
        `dict`: `bits_per_dim` and its standard error over images, the mean decoder and prior terms,
        `terms_mean_per_timestep` (T values), UNet evaluations, and `stratified` (the estimate, its standard error,
        its difference from the full bound with the standard error of that difference, the evaluations saved).
    """
    num_images, num_timesteps = len(images), pipe.scheduler.config.num_train_timesteps
    start = time.perf_counter()
    full = pipe.elbo(images, generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    bits_per_dim, stderr = _mean_and_stderr(full.bits_per_dim.cpu())
    report: dict[str, Any] = {
        "num_images": num_images,
        "num_timesteps": num_timesteps,
        "bits_per_dim": bits_per_dim,
        "bits_per_dim_stderr": stderr,
        "decoder_bpd": full.terms[:, 0].mean().item(),
        "prior_bpd": full.prior.mean().item(),
        "terms_mean_per_timestep": full.terms.double().mean(dim=0).cpu().tolist(),
        "unet_evaluations": num_images * num_timesteps,
        "seconds": time.perf_counter() - start,
    }
    if num_strata > 0:
        report["stratified"] = stratified_likelihood(
            pipe, images, min(num_strata, num_timesteps), full.bits_per_dim.cpu(), batch_size, seed
        )
    return report


def stratified_likelihood(
    pipe: DDPMPosteriorPipeline,
    images: torch.Tensor,
    num_strata: int,
    full_bits_per_dim: torch.Tensor,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """The stratified estimate on the same images as the full bound, and how the two agree."""
    start = time.perf_counter()
    x0 = (images.float() / 127.5 - 1).to(device=pipe.device, dtype=pipe.unet.dtype)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pipe.unet(x_t, t).sample

    # a different seed from the full bound's: the two estimates must not share their noise
    generator = torch.Generator().manual_seed(seed + 1)
    estimate = stratified_elbo_bpd(
        model_fn, pipe.scheduler, x0, num_strata, generator=generator, batch_size=batch_size
    )
    bits_per_dim, stderr = _mean_and_stderr(estimate.bits_per_dim.cpu())
    difference, difference_stderr = _mean_and_stderr(estimate.bits_per_dim.cpu() - full_bits_per_dim.double())
    num_images, num_timesteps = len(images), pipe.scheduler.config.num_train_timesteps
    return {
        "num_strata": num_strata,
        "spacing": "log",
        "bits_per_dim": bits_per_dim,
        "bits_per_dim_stderr": stderr,
        "difference_from_full": difference,
        "difference_stderr": difference_stderr,
        "unet_evaluations": num_images * num_strata,
        "unet_evaluations_saved": num_images * (num_timesteps - num_strata),
        "seconds": time.perf_counter() - start,
    }


def plot_elbo_terms(terms: list[float], path: str | os.PathLike) -> None:
    """Save a line plot of the mean ELBO term per timestep index (log-scale y axis, bits/dim)."""
    line_plot(
        {"ELBO term": list(enumerate(terms))},
        path,
        title="Mean ELBO term per timestep (bits/dim, log scale)",
        xlabel="timestep index t (0 = decoder term L_0)",
        ylabel="bits/dim",
        log_y=True,
    )


# ----------------------------------------------------------------------------------------------------------------
# Inception
@torch.no_grad()
def inception_features(extractor: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Pool features of uint8 images: grey repeated to 3 channels, bilinear resize to 299, values in [0, 255]."""
    return_features = "return_features" in _forward_argument_names(extractor)
    features = []
    for batch in images.split(batch_size):
        inputs = batch.float().expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch.float()
        # float32 bilinear weights can overshoot 255 by an ulp; the extractor's contract is [0, 255]
        inputs = resize_images(inputs, INCEPTION_SIZE).clamp(0, 255)
        outputs = extractor(inputs, return_features=True) if return_features else extractor(inputs)
        features.append(outputs.reshape(len(batch), -1).double().numpy())
    return np.concatenate(features)


def _forward_argument_names(module: torch.nn.Module) -> list[str]:
    schema = getattr(module.forward, "schema", None)  # TorchScript methods describe themselves by a schema
    if schema is not None:
        return [argument.name for argument in schema.arguments]
    return list(inspect.signature(module.forward).parameters)


def inception_metrics(
    extractor: torch.nn.Module,
    samples: torch.Tensor,
    reference: torch.Tensor,
    baseline: torch.Tensor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """FID and KID with a local Inception extractor, each beside its real-vs-real baseline."""
    distances = feature_distances(
        inception_features(extractor, samples, batch_size),
        inception_features(extractor, reference, batch_size),
        inception_features(extractor, baseline, batch_size),
        kid_subsets,
        kid_subset_size,
        seed,
    )
    return {name.replace("frechet_distance", "fid"): value for name, value in distances.items()}


# ----------------------------------------------------------------------------------------------------------------
# Orchestration
def evaluate(
    pipeline_or_path: str | os.PathLike | DiffusionPipeline,
    *,
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    num_samples: int = 1000,
    num_elbo_images: int | None = None,
    elbo_strata: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    inception_weights: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    sample_kwargs: dict[str, Any] | None = None,
    classifier_resolution: int | None = None,
    classifier_cache_dir: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, Any]:
    """Evaluate a pipeline on the held-out split of its dataset and write the report (see the module docstring).

    Args:
        pipeline_or_path (`str`, `os.PathLike` or `DiffusionPipeline`): an NCSN / DDPM pipeline, a saved folder
            (ours or diffusers' `DDPMPipeline`) or a Hub repo id.
        dataset_name (`str`, *optional*): the training data, as for training (default: the embedded digits).
        train_data_dir (`str`, *optional*): a local image folder instead.
        image_column (`str`, *optional*): the image column.
        num_samples (`int`, defaults to 1000): images to generate.
        num_elbo_images (`int`, *optional*): held-out images for the likelihood (default: all of them).
        elbo_strata (`int`, defaults to 50): K of the stratified ELBO estimate; 0 skips it.
        batch_size (`int`, defaults to 256): images per sampling call, UNet inputs per ELBO call.
        seed (`int`, defaults to 0): seed of sampling, of the ELBO noise and of the baseline's training images.
        inception_weights (`str` or `os.PathLike`, *optional*): a local Inception feature extractor (see
            `load_inception_extractor`); without it FID is skipped, with a message saying so.
        output_dir (`str` or `os.PathLike`, *optional*): where to write `report.json`, `samples.png` and
            `elbo_terms.png` (default: `default_output_dir` for a path; nothing is written for a pipeline object).
        sample_kwargs (`dict`, *optional*): extra sampling arguments, e.g. `num_inference_steps`,
            `num_langevin_steps` (NCSN).
        classifier_resolution (`int`, *optional*): input size of the feature classifier (default: 8 for the digits,
            their native size; otherwise the pipeline's sample size, at most 32).
        classifier_cache_dir (`str` or `os.PathLike`, *optional*): the classifier cache (see
            `hf_ddpm_ncsn.feature_classifier`).
        kid_subsets (`int`, defaults to 100): subsets of the kernel distances.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distances.

    Returns:
        `dict`: the report; `report["model_card_metrics"]` is a flat dict of the headline numbers.
    """
    check_positive_int("num_samples", num_samples, minimum=2)
    check_positive_int("batch_size", batch_size)
    check_positive_int("elbo_strata", elbo_strata, minimum=0)
    if num_elbo_images is not None:
        check_positive_int("num_elbo_images", num_elbo_images)
    # loaded first: a wrong path fails before minutes of sampling
    extractor = None if inception_weights is None else load_inception_extractor(inception_weights)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    pipe = load_pipeline(pipeline_or_path)
    check_sampling_arguments(pipe, batch_size, sample_kwargs or {})  # before the data, the classifier, the ELBO
    if output_dir is None and not isinstance(pipeline_or_path, DiffusionPipeline):
        output_dir = default_output_dir(pipeline_or_path)
    size = pipe.unet.config.sample_size
    resolution, channels = (size if isinstance(size, int) else size[0]), pipe.unet.config.in_channels
    is_digits = train_data_dir is None and dataset_name in (None, DIGITS)
    source = {"dataset_name": dataset_name, "train_data_dir": train_data_dir, "image_column": image_column}

    tick = time.perf_counter()
    logger.info("loading the held-out and training images at %d px", resolution)
    held_out, _ = load_images(**source, split="test", resolution=resolution, channels=channels)
    train, _ = load_images(**source, split="train", resolution=resolution, channels=channels)
    baseline_rows = np.random.default_rng(seed).permutation(len(train))[:num_samples]
    baseline = train[np.sort(baseline_rows)]
    timings["load_data"] = time.perf_counter() - tick

    report: dict[str, Any] = {
        "pipeline": str(pipeline_or_path) if not isinstance(pipeline_or_path, DiffusionPipeline) else None,
        "pipeline_class": type(pipe).__name__,
        "dataset": train_data_dir or dataset_name or DIGITS,
        "seed": seed,
        "sample_kwargs": dict(sample_kwargs or {}),
        "counts": {
            "samples": num_samples,
            "held_out": len(held_out),
            "train": len(train),
            "baseline_train_images": len(baseline),
        },
    }

    tick = time.perf_counter()
    resolution_for_classifier = classifier_resolution or (8 if is_digits else min(resolution, 32))
    classifier, report["classifier"] = _classifier(source, resolution_for_classifier, channels, classifier_cache_dir)
    timings["classifier"] = time.perf_counter() - tick

    if isinstance(pipe, DDPMPosteriorPipeline):
        tick = time.perf_counter()
        elbo_images = held_out[: num_elbo_images or len(held_out)]
        logger.info("bits/dim of %d held-out images (every ELBO term, then stratified)", len(elbo_images))
        report["likelihood"] = likelihood_report(pipe, elbo_images, elbo_strata, batch_size, seed)
        timings["likelihood"] = time.perf_counter() - tick
    else:
        report["likelihood"] = {"skipped": NCSN_HAS_NO_ELBO}

    tick = time.perf_counter()
    logger.info("sampling %d images", num_samples)
    samples = generate_samples(pipe, num_samples, batch_size, seed, **(sample_kwargs or {}))
    timings["sampling"] = time.perf_counter() - tick

    tick = time.perf_counter()
    report["sample_quality"] = sample_quality(
        samples,
        held_out,
        baseline,
        classifier,
        train=train,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        seed=seed,
        batch_size=batch_size,
    )
    timings["sample_quality"] = time.perf_counter() - tick

    if extractor is None:
        report["inception"] = {"skipped": INCEPTION_MISSING}
        logger.warning(INCEPTION_MISSING)
    else:
        tick = time.perf_counter()
        report["inception"] = {
            "feature_extractor": str(inception_weights),
            **inception_metrics(extractor, samples, held_out, baseline, kid_subsets, kid_subset_size, seed),
        }
        timings["inception"] = time.perf_counter() - tick

    timings["total"] = time.perf_counter() - started
    report["timings"] = timings
    report["model_card_metrics"] = model_card_metrics(report)
    if output_dir is not None:
        report["files"] = write_outputs(report, samples, output_dir)
    return report


def _classifier(
    source: dict[str, str | None], resolution: int, channels: int, cache_dir: str | os.PathLike | None
) -> tuple[FeatureClassifier | None, dict[str, Any]]:
    """The dataset's feature classifier and its report section, or None and why it is missing."""
    try:
        classifier = load_or_train_classifier(
            dataset_name=source["dataset_name"] or DIGITS,
            train_data_dir=source["train_data_dir"],
            image_column=source["image_column"],
            resolution=resolution,
            channels=channels,
            # fixed, not the evaluation seed: every evaluation of a dataset measures in the same feature space
            seed=CLASSIFIER_SEED,
            cache_dir=cache_dir,
        )
    except MissingLabelsError as err:
        logger.warning("classifier metrics skipped: %s", err)
        return None, {"skipped": str(err)}
    keys = ("held_out_accuracy", "train_seconds", "num_train_images", "num_held_out_images", "cache_file")
    section = {key: classifier.info[key] for key in keys}
    section.update(resolution=resolution, feature_dim=classifier.config["feature_dim"], seed=CLASSIFIER_SEED)
    return classifier, section


def model_card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report as a flat name -> float dict, for the model card."""
    elbo, quality = report.get("likelihood", {}), report.get("sample_quality", {})
    metrics = {
        "bits_per_dim": elbo.get("bits_per_dim"),
        "bits_per_dim_stratified": elbo.get("stratified", {}).get("bits_per_dim"),
        "classifier_held_out_accuracy": report.get("classifier", {}).get("held_out_accuracy"),
        **{
            name: quality.get(name)
            for name in (
                "classifier_frechet_distance",
                "classifier_frechet_distance_real_baseline",
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
    """Write samples.png, elbo_terms.png (when there are ELBO terms) and report.json (last, atomically)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"report": str(folder / "report.json"), "samples": str(folder / "samples.png")}
    sample_grid(samples).save(files["samples"])
    terms = report["likelihood"].get("terms_mean_per_timestep")
    if terms is not None:
        files["elbo_terms"] = str(folder / "elbo_terms.png")
        plot_elbo_terms(terms, files["elbo_terms"])
    atomic_write_text(files["report"], dumps({**report, "files": files}, indent=2))
    return files


# ----------------------------------------------------------------------------------------------------------------
# The printed table
def _number(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}"
    return text if spread is None else f"{text} ± {spread:.2g}"


def format_report(report: dict[str, Any]) -> str:
    """A short aligned table of the headline numbers, each beside its real-vs-real baseline."""
    rows: list[tuple[str, str, str]] = [("metric", "value", "real-vs-real baseline")]
    notes: list[str] = []

    def add(name: str, value: str, baseline: str = "") -> None:
        rows.append((name, value, baseline))

    elbo = report.get("likelihood", {})
    if "bits_per_dim" in elbo:
        name = f"bits_per_dim (full ELBO, {elbo['num_images']} held-out images, T={elbo['num_timesteps']})"
        add(name, _number(elbo["bits_per_dim"], elbo["bits_per_dim_stderr"]))
        stratified = elbo.get("stratified")
        if stratified is not None:
            name = f"bits_per_dim_stratified (K={stratified['num_strata']}, difference to full"
            name += f" {_number(stratified['difference_from_full'], stratified['difference_stderr'])})"
            add(name, _number(stratified["bits_per_dim"], stratified["bits_per_dim_stderr"]))
    quality = report.get("sample_quality", {})
    if "classifier_frechet_distance" in quality:
        add(
            "classifier_frechet_distance",
            _number(quality["classifier_frechet_distance"]),
            _number(quality["classifier_frechet_distance_real_baseline"]),
        )
        add(
            "classifier_kid",
            _number(quality["classifier_kid"], quality["classifier_kid_std"]),
            _number(quality["classifier_kid_real_baseline"], quality["classifier_kid_real_baseline_std"]),
        )
        add(
            "class_coverage (entropy / log K)",
            _number(quality["class_coverage"]),
            _number(quality["class_coverage_real_baseline"]),
        )
    classifier = report.get("classifier", {})
    if "held_out_accuracy" in classifier:
        add("classifier held-out accuracy", _number(classifier["held_out_accuracy"]))
    nearest = quality.get("nearest_train_distance")
    if nearest is not None:
        name = f"nearest_train_distance median (ratio {_number(nearest['ratio']['median'])})"
        add(name, _number(nearest["samples"]["median"]), _number(nearest["held_out"]["median"]))
    inception = report.get("inception", {})
    if "fid" in inception:
        add("inception_fid", _number(inception["fid"]), _number(inception["fid_real_baseline"]))
        add(
            "inception_kid",
            _number(inception["kid"], inception["kid_std"]),
            _number(inception["kid_real_baseline"], inception["kid_real_baseline_std"]),
        )
    notes += [section["skipped"] for section in (elbo, classifier, inception) if "skipped" in section]

    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    counts = report.get("counts", {})
    header = (
        f"Evaluation of {report.get('pipeline') or 'a pipeline'} ({report.get('pipeline_class')}) on "
        f"{report.get('dataset')}, seed {report.get('seed')}: {counts.get('samples')} samples vs "
        f"{counts.get('held_out')} held-out images; baseline: {counts.get('baseline_train_images')} training images"
    )
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([header, *table, *(f"note: {note}" for note in notes)])
