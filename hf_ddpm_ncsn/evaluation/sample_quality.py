"""Sample quality without a network: sampling, the feature classifier's Fréchet / kernel distances and class
coverage, each beside its real-vs-real baseline, and the nearest-training-image (memorisation) check."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from .distributed import Shard, chunk_generator, map_chunks
from .feature_classifier import FeatureClassifier
from .metrics import (
    class_coverage,
    distance_summary,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    nearest_neighbour_distances,
)

# arguments of a pipeline call that the evaluation sets itself
_RESERVED_CALL_ARGUMENTS = ("batch_size", "generator", "output_type", "return_dict")


# ----------------------------------------------------------------------------------------------------------------
# Images
def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of float images (N, C, H, W) to (N, C, resolution, resolution), antialiased when shrinking.

    Args:
        images (`torch.Tensor`): float images (N, C, H, W).
        resolution (`int`): output height and width.
    """
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    shrinking = min(images.shape[-2:]) > resolution
    return torch.nn.functional.interpolate(
        images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking
    )


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float64 in [0, 1] (the classifier's and the pixel distances' scale, not the models')."""
    return images.double() / 255


# ----------------------------------------------------------------------------------------------------------------
# Sampling
def generate_samples(
    pipe: DiffusionPipeline,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    shard: Shard | None = None,
    **call_kwargs,
) -> torch.Tensor:
    """`num_samples` images from `pipe`, in batches, batch k from its own CPU generator (`chunk_generator`: batch
    0 from `seed`), shared between processes by `shard`.

    Args:
        pipe (`DiffusionPipeline`): an NCSN or DDPM pipeline.
        num_samples (`int`): images to generate.
        batch_size (`int`): images per pipeline call.
        seed (`int`, defaults to 0): seed of the first batch's generator.
        shard (`Shard`, *optional*): this process's share of the batches (default: all of them); every process
            returns all the samples.
        call_kwargs: further sampling arguments of the pipeline (e.g. `num_inference_steps`).

    Returns:
        `torch.Tensor`: uint8 (N, C, H, W), i.e. the 8-bit images a saved PNG would hold, the same for any number
        of processes.
    """
    check_sampling_arguments(pipe, batch_size, call_kwargs)

    def batch(chunk: int) -> torch.Tensor:
        size = min(batch_size, num_samples - chunk * batch_size)
        generator = chunk_generator(seed, chunk)
        images = pipe(batch_size=size, generator=generator, output_type="np", **call_kwargs).images
        # the pipelines' "np" output is already in [0, 1] (not the models' [-1, 1]): 8 bits as a PNG would hold
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        return (pixels * 255).round().clamp(0, 255).to(torch.uint8)

    return torch.cat(map_chunks(shard or Shard(), math.ceil(num_samples / batch_size), batch))


def check_sampling_arguments(pipe: DiffusionPipeline, batch_size: int, call_kwargs: dict[str, Any]) -> None:
    """Raise a `ValueError` for a sampling argument the pipeline does not take or would refuse, before any work.

    Args:
        pipe (`DiffusionPipeline`): the pipeline that will sample.
        batch_size (`int`): images per call.
        call_kwargs (`dict`): the other sampling arguments.
    """
    accepted = set(inspect.signature(pipe.__call__).parameters) - set(_RESERVED_CALL_ARGUMENTS)
    unknown = sorted(set(call_kwargs) - accepted)
    if unknown:
        raise ValueError(f"{type(pipe).__name__} does not take {unknown}; its sampling arguments: {sorted(accepted)}")
    pipe.check_inputs(batch_size=batch_size, **call_kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Classifier features and distances
@torch.no_grad()
def classifier_outputs(
    classifier: FeatureClassifier, images: torch.Tensor, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) and class probabilities (N, K) of uint8 images, resized to the classifier's resolution.

    Args:
        classifier (`FeatureClassifier`): the feature network.
        images (`torch.Tensor`): uint8 (N, C, H, W).
        batch_size (`int`, defaults to 256): images per classifier call.
    """
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

    Args:
        sample_features (`np.ndarray`): (N, F) features of the samples.
        reference_features (`np.ndarray`): (M, F) features of the held-out images.
        baseline_features (`np.ndarray`): (N, F) features of as many training images as samples.
        kid_subsets (`int`, defaults to 100): subsets of the kernel distance.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distance.
        seed (`int`, defaults to 0): seed of the kernel distance's subsets.

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
        images = {"samples": samples, "reference": reference, "baseline": baseline}
        outputs = {name: classifier_outputs(classifier, batch, batch_size) for name, batch in images.items()}
        distances = feature_distances(
            outputs["samples"][0], outputs["reference"][0], outputs["baseline"][0], kid_subsets, kid_subset_size, seed
        )
        report.update({f"classifier_{name}": value for name, value in distances.items()})
        report.update(_coverage(outputs["samples"][1], outputs["reference"][1]))
    if train is not None:
        report["nearest_train_distance"] = memorisation(samples, reference, train)
    return report


def _coverage(sample_probabilities: np.ndarray, reference_probabilities: np.ndarray) -> dict[str, Any]:
    """The class-coverage entries of a sample-quality report: the samples' and the held-out images' (baseline)."""
    coverage = class_coverage(sample_probabilities)
    reference_coverage = class_coverage(reference_probabilities)
    return {
        "class_coverage": coverage["normalized_coverage"],
        "class_coverage_real_baseline": reference_coverage["normalized_coverage"],
        "class_coverage_details": {"samples": coverage, "held_out": reference_coverage},
    }


# ----------------------------------------------------------------------------------------------------------------
# Memorisation
def memorisation(samples: torch.Tensor, reference: torch.Tensor, train: torch.Tensor) -> dict[str, Any]:
    """Nearest-training-image distances (pixels in [0, 1]) of samples and of held-out images, and their ratios.

    Held-out images are new draws from the data distribution: samples whose distances are much smaller (ratio << 1)
    are copies of training images rather than new ones.

    Args:
        samples (`torch.Tensor`): uint8 (N, C, H, W) images to check.
        reference (`torch.Tensor`): uint8 held-out real images.
        train (`torch.Tensor`): uint8 training images.
    """
    train_pixels = to_unit_interval(train)
    samples_summary = distance_summary(nearest_neighbour_distances(to_unit_interval(samples), train_pixels))
    held_out_summary = distance_summary(nearest_neighbour_distances(to_unit_interval(reference), train_pixels))
    return {
        "samples": samples_summary,
        "held_out": held_out_summary,
        "ratio": {name: _ratio(value, held_out_summary[name]) for name, value in samples_summary.items()},
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None
