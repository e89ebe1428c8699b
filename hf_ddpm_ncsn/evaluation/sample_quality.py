"""Sample quality without a network: sampling, the feature classifier's Fréchet / kernel distances and class
coverage, each beside its real-vs-real baseline (with its spread over draws of real images and over the held-out
reference), and the nearest-training-image (memorisation) check."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..schedulers.validation import check_positive_int
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
# spawn keys of the random streams below the evaluation seed: draw 0 of the baseline is `default_rng(seed)` itself
_DRAW_STREAM, _BOOTSTRAP_STREAM = 1, 2


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
        features.append(batch_features.double().cpu().numpy())
        probabilities.append(batch_probabilities.double().cpu().numpy())
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
    baseline_draws: int = 1,
    reference_bootstraps: int = 0,
) -> dict[str, Any]:
    """Sample-quality numbers of a set of images, each beside its real-data baseline.

    Works on any images (generated or not), which is how the evaluation itself is tested: real images score near
    the baseline, noise far from it.

    Args:
        samples (`torch.Tensor`): uint8 (N, C, H, W) images to evaluate.
        reference (`torch.Tensor`): uint8 held-out real images, what the samples are compared with.
        baseline (`torch.Tensor`): uint8 real images from the train split, as many as the samples: the real-vs-real
            baseline compares them with `reference` exactly as the samples are compared. It is draw 0 of the
            baseline (the evaluation's is `train[baseline_draw_rows(len(train), N, 1, seed)[0]]`).
        classifier (`FeatureClassifier`, *optional*): the feature network; without it the classifier metrics are
            skipped.
        train (`torch.Tensor`, *optional*): uint8 training images for the nearest-neighbour (memorisation) check,
            and the pool of the baseline's further draws.
        kid_subsets (`int`, defaults to 100): subsets of the kernel distance.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distance (capped by the set sizes).
        seed (`int`, defaults to 0): seed of the kernel distance's subsets, of the baseline's draws and of the
            bootstrap.
        batch_size (`int`, defaults to 256): images per classifier call.
        baseline_draws (`int`, defaults to 1): draws of `len(baseline)` training images in all: `baseline` and
            draws 1, 2, ... of `baseline_draw_rows(len(train), len(baseline), baseline_draws, seed)` (needs `train`
            when more than 1); the classifier features of those training images are computed once.
        reference_bootstraps (`int`, defaults to 0): resamples (with replacement) of the held-out images' features
            for the spread that the fixed reference puts on the Fréchet distances (0 skips it).

    Returns:
        `dict`: `classifier_frechet_distance`, `classifier_kid` (and `_std`), `class_coverage` (normalised entropy of
        the mean predicted class distribution), each with a `_real_baseline` twin (baseline draw 0);
        `class_coverage_details`; with the classifier, the baseline over its draws and the reference bootstrap
        (`baseline_spread`, keys prefixed `classifier_`); and, with `train`, `nearest_train_distance` (summaries
        for the samples and the held-out images, and their ratio).
    """
    check_baseline_settings(baseline_draws, reference_bootstraps)
    if baseline_draws > 1 and train is None:
        raise ValueError(f"baseline_draws={baseline_draws} needs the training images (train) to draw from")
    report: dict[str, Any] = {}
    if classifier is not None:
        images = {"samples": samples, "reference": reference, "baseline": baseline}
        outputs = {name: classifier_outputs(classifier, batch, batch_size) for name, batch in images.items()}
        distances = feature_distances(
            outputs["samples"][0], outputs["reference"][0], outputs["baseline"][0], kid_subsets, kid_subset_size, seed
        )
        report.update({f"classifier_{name}": value for name, value in distances.items()})
        report.update(_coverage(outputs["samples"][1], outputs["reference"][1]))
        draws = [outputs["baseline"]]
        if baseline_draws > 1:
            draws += _draw_outputs(classifier, train, len(baseline), baseline_draws, seed, batch_size)
        spread = baseline_spread(
            outputs["samples"][0],
            outputs["reference"][0],
            [features for features, _ in draws],
            [probabilities for _, probabilities in draws],
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
            seed=seed,
            reference_bootstraps=reference_bootstraps,
        )
        report.update({f"classifier_{name}": value for name, value in spread.items()})
    if train is not None:
        report["nearest_train_distance"] = memorisation(samples, reference, train)
    return report


def check_baseline_settings(baseline_draws: int, reference_bootstraps: int) -> None:
    """Raise a `ValueError` naming the argument for a bad number of baseline draws or of reference resamples."""
    check_positive_int("baseline_draws", baseline_draws)
    check_positive_int("reference_bootstraps", reference_bootstraps, minimum=0)


def baseline_draw_rows(num_train: int, num_samples: int, num_draws: int = 1, seed: int = 0) -> list[np.ndarray]:
    """The training-image rows (sorted) of each draw of the real-vs-real baseline.

    Draw 0 is the first `num_samples` rows of `np.random.default_rng(seed).permutation(num_train)`, the
    evaluation's single baseline before there were several draws. When the training set holds
    `num_draws * num_samples` images the draws are disjoint: draw k is the k-th block of `num_samples` rows of that
    same permutation. When it is too small for that, draw k >= 1 is the first `num_samples` rows of a permutation of
    its own (seeded by `seed` and k): every draw is still `num_samples` distinct images, but draws share images
    (which makes their spread a little smaller). With fewer training images than samples every draw is the whole
    training set.

    Either way the draws come from a finite pool, so their spread is that of `num_samples` images out of
    `num_train`, not of as many fresh images: for an average the variance is smaller by the factor
    1 - num_samples / num_train.

    Args:
        num_train (`int`): training images.
        num_samples (`int`): images per draw (the number of samples).
        num_draws (`int`, defaults to 1): draws.
        seed (`int`, defaults to 0): the evaluation seed.
    """
    permutation = np.random.default_rng(seed).permutation(num_train)
    if num_draws * num_samples <= num_train:
        blocks = [permutation[k * num_samples : (k + 1) * num_samples] for k in range(num_draws)]
    else:
        blocks = [permutation[:num_samples]] + [
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DRAW_STREAM, k))).permutation(num_train)[
                :num_samples
            ]
            for k in range(1, num_draws)
        ]
    return [np.sort(block) for block in blocks]


def _draw_outputs(
    classifier: FeatureClassifier, train: torch.Tensor, num_samples: int, num_draws: int, seed: int, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Classifier features and probabilities of baseline draws 1, 2, ...: one pass over the images they use."""
    rows = baseline_draw_rows(len(train), num_samples, num_draws, seed)[1:]
    used = np.unique(np.concatenate(rows))
    features, probabilities = classifier_outputs(classifier, train[used], batch_size)
    positions = [np.searchsorted(used, draw) for draw in rows]
    return [(features[position], probabilities[position]) for position in positions]


def _mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (ddof 1; None for fewer than 2 values), both computed on the values
    shifted by the first one (the shifted-data algorithm): equal values give exactly that value and exactly 0."""
    shifted = np.asarray(values, dtype=np.float64) - values[0]
    return float(values[0] + shifted.mean()), (float(shifted.std(ddof=1)) if len(values) > 1 else None)


def _std(values: Sequence[float]) -> float | None:
    return _mean_and_std(values)[1]


def baseline_spread(
    sample_features: np.ndarray,
    reference_features: np.ndarray,
    draw_features: Sequence[np.ndarray],
    draw_probabilities: Sequence[np.ndarray] | None = None,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    reference_bootstraps: int = 0,
) -> dict[str, Any]:
    """How sure the sample metrics are: the real-vs-real baseline over several draws of real images, the samples'
    Fréchet distance as a ratio to it, and the spread that the fixed held-out reference puts on both.

    Only statistics are recomputed: every set enters as its features.

    Args:
        sample_features (`np.ndarray`): (N, F) features of the samples.
        reference_features (`np.ndarray`): (M, F) features of the held-out images.
        draw_features (sequence of `np.ndarray`): (N, F) features of each draw of training images (draw 0 first).
        draw_probabilities (sequence of `np.ndarray`, *optional*): their class probabilities, for the coverage of
            each draw.
        kid_subsets (`int`, defaults to 100), kid_subset_size (`int`, defaults to 1000), seed (`int`, defaults to 0):
            as for `feature_distances` (every draw's kernel distance uses the same subsets seed).
        reference_bootstraps (`int`, defaults to 0): resamples of the M reference rows with replacement (seeded by
            `seed`); 0 skips the bootstrap.

    Returns:
        `dict`:
        - `frechet_distance_real_baseline_mean`, `frechet_distance_real_baseline_std`: the mean and standard deviation
          (ddof 1; None for one draw) of the baseline's Fréchet distance over the draws;
        - `frechet_distance_ratio`: the samples' Fréchet distance over that mean; `frechet_distance_ratio_std`: the
          spread the draws' spread implies for it, ratio × std / mean (a real draw's own ratio spreads by std / mean
          around 1);
        - `real_baseline_draws`: `num_draws`, and per draw `frechet_distance`, `kid` and (with probabilities)
          `class_coverage`, with `kid_mean` / `kid_std` and `class_coverage_mean` / `class_coverage_std`;
        - `reference_bootstrap`: `num_held_out_images` (M), `resamples` and, for 2 resamples or more, the standard
          deviations over them of the samples' Fréchet distance (`frechet_distance_std`), of draw 0's
          (`frechet_distance_real_baseline_std`) and of the ratio to the draws' mean (`frechet_distance_ratio_std`),
          each resample's reference serving samples and draws alike.
    """
    if not draw_features:
        raise ValueError("baseline_spread needs at least one draw of baseline features")
    reference = feature_statistics(reference_features)
    sample_statistics = feature_statistics(sample_features)
    draw_statistics = [feature_statistics(features) for features in draw_features]
    frechet = frechet_distance(*sample_statistics, *reference)
    draw_frechet = [frechet_distance(*statistics, *reference) for statistics in draw_statistics]
    draw_kid = [
        kernel_inception_distance(features, reference_features, kid_subsets, kid_subset_size, seed)[0]
        for features in draw_features
    ]
    mean, std = _mean_and_std(draw_frechet)
    ratio = _ratio(frechet, mean)
    draws: dict[str, Any] = {"num_draws": len(draw_features), "frechet_distance": draw_frechet, "kid": draw_kid}
    draws["kid_mean"], draws["kid_std"] = _mean_and_std(draw_kid)
    if draw_probabilities is not None:
        coverage = [class_coverage(probabilities)["normalized_coverage"] for probabilities in draw_probabilities]
        draws["class_coverage"] = coverage
        draws["class_coverage_mean"], draws["class_coverage_std"] = _mean_and_std(coverage)
    return {
        "frechet_distance_real_baseline_mean": mean,
        "frechet_distance_real_baseline_std": std,
        "frechet_distance_ratio": ratio,
        "frechet_distance_ratio_std": None if ratio is None or std is None else ratio * std / mean,
        "real_baseline_draws": draws,
        "reference_bootstrap": reference_bootstrap(
            sample_statistics, draw_statistics, reference_features, reference_bootstraps, seed
        ),
    }


def reference_bootstrap(
    sample_statistics: tuple[np.ndarray, np.ndarray],
    draw_statistics: Sequence[tuple[np.ndarray, np.ndarray]],
    reference_features: np.ndarray,
    resamples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The spread that the fixed reference of M held-out images puts on the Fréchet distances: each resample draws
    M of its rows with replacement, and the samples and every baseline draw are measured against it.

    Args:
        sample_statistics (`tuple`): mean and covariance of the samples' features.
        draw_statistics (sequence of `tuple`): mean and covariance of each baseline draw's features (draw 0 first).
        reference_features (`np.ndarray`): (M, F) features of the held-out images.
        resamples (`int`): bootstrap resamples (0: none).
        seed (`int`, defaults to 0): the evaluation seed (the resamples have their own stream below it).

    Returns:
        `dict`: `num_held_out_images`, `resamples`, and for 2 resamples or more `frechet_distance_std`,
        `frechet_distance_real_baseline_std` (draw 0) and `frechet_distance_ratio_std` (ddof 1).
    """
    count = len(reference_features)
    section: dict[str, Any] = {"num_held_out_images": count, "resamples": resamples}
    if resamples < 2:
        return section
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BOOTSTRAP_STREAM,)))
    frechet, baseline, ratios = [], [], []
    for _ in range(resamples):
        reference = feature_statistics(reference_features[rng.integers(0, count, count)])
        frechet.append(frechet_distance(*sample_statistics, *reference))
        draws = [frechet_distance(*statistics, *reference) for statistics in draw_statistics]
        baseline.append(draws[0])
        ratios.append(_ratio(frechet[-1], _mean_and_std(draws)[0]))
    section.update(
        frechet_distance_std=_std(frechet),
        frechet_distance_real_baseline_std=_std(baseline),
        frechet_distance_ratio_std=None if None in ratios else _std(ratios),
    )
    return section


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
