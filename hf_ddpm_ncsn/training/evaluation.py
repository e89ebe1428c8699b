"""Evaluation during training (`--eval_steps`): every N steps and at the end, the main process measures the EMA
weights on a fixed subset of the held-out split, logs the numbers to the trackers and keeps them for metrics.json;
`--keep_best_by` keeps the pipeline of the best evaluation in `<output_dir>/best`.

Each measurement is the offline evaluation's own function (`hf_ddpm_ncsn.evaluation`) with its seeds, so a final
in-training number equals what `scripts/evaluate.py` reports for the saved pipeline with the same counts, batch
size and seed:

- `held_out_loss`: the family's training loss (NCSN: denoising score matching) on the held-out images, with fixed
  levels and noise, so that two evaluations differ by the model only;
- `held_out_bits_per_dim` (DDPM): the stratified ELBO, `--elbo_strata K` of the evaluation;
- `ode_bits_per_dim`: the probability-flow ODE's, at tolerance 1e-4 (`--eval_ode_images`, off by default);
- `classifier_frechet_distance`: samples against the held-out images in the feature classifier's space, beside the
  real-vs-real baseline of as many training images (the evaluation's `classifier_frechet_distance_real_baseline`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from ..evaluation.distributed import chunk_generator
from ..evaluation.feature_classifier import (
    CLASSIFIER_SEED,
    FeatureClassifier,
    MissingLabelsError,
    decode_images,
    default_classifier_resolution,
    load_images,
    load_or_train_classifier,
)
from ..evaluation.likelihood_report import ode_likelihood_report, stratified_likelihood
from ..evaluation.metrics import feature_statistics, frechet_distance
from ..evaluation.sample_quality import baseline_draw_rows, classifier_outputs, generate_samples
from ..images import uint8_to_model
from ..json_utils import dumps
from ..plots import line_plot
from ..sharing.atomic import atomic_directory
from .conditioning import conditional_model

if TYPE_CHECKING:
    from ..families import Family
    from ..pipelines.shareable_pipeline import ShareablePipeline
    from .arguments import TrainingArguments

logger = logging.getLogger(__name__)

#: the ODE's tolerance during training: the main job's, 4e-4 bits/dim from 1e-5's at half the network calls
ODE_TOLERANCE = 1e-4
#: where --keep_best_by keeps its pipeline, and the file in it that says which evaluation it is
BEST_DIR = "best"
BEST_RECORD = "evaluation.json"
# the held-out loss draws its levels and noise from seed + 3: the ELBO uses seed + 1, the ODE seed + 2
LOSS_SEED_OFFSET = 3


@dataclass
class TrainingEvaluator:
    """What every evaluation of a run reuses: the held-out images, the classifier and the reference statistics.

    Args:
        args (`TrainingArguments`): the run's evaluation settings (`--eval_*`, `--seed`).
        family (`Family`): the model family.
        held_out (`torch.Tensor`): uint8 (N, C, H, W), the first `--eval_num_images` held-out images.
        classifier (`FeatureClassifier`, *optional*): the feature network (None: no Fréchet distance).
        reference (`tuple`, *optional*): mean and covariance of the features of every held-out image.
        frechet_baseline (`float`, *optional*): the Fréchet distance of as many training images as samples.
    """

    args: TrainingArguments
    family: Family
    held_out: torch.Tensor
    classifier: FeatureClassifier | None = None
    reference: tuple[np.ndarray, np.ndarray] | None = None
    frechet_baseline: float | None = None

    def evaluate(self, pipe: ShareablePipeline) -> dict[str, Any]:
        """Every metric of the run for `pipe` (the EMA weights), with its cost.

        Returns:
            `dict`: metric name -> value, `seconds`, and for a DDPM the stratified ELBO's mean term per stratum.
        """
        start = time.perf_counter()
        args, results = self.args, {}
        with torch.no_grad():
            results["held_out_loss"] = self._held_out_loss(pipe)
        if callable(getattr(pipe, "stratified_elbo", None)):
            strata = min(args.eval_elbo_strata, pipe.scheduler.config.num_train_timesteps)
            stratified = stratified_likelihood(pipe, self.held_out, strata, None, args.eval_batch_size, args.seed)
            results["held_out_bits_per_dim"] = stratified["bits_per_dim"]
            results["elbo_terms"] = list(
                zip(stratified["mean_timestep_per_stratum"], stratified["terms_per_stratum"], strict=True)
            )
        if args.eval_ode_images:
            images = self.held_out[: args.eval_ode_images]
            ode = ode_likelihood_report(pipe, images, 1, ODE_TOLERANCE, ODE_TOLERANCE, args.eval_batch_size, args.seed)
            results["ode_bits_per_dim"] = ode["bits_per_dim"]
        if self.classifier is not None:
            results.update(self._frechet(pipe))
        return {**results, "seconds": time.perf_counter() - start}

    def _held_out_loss(self, pipe: ShareablePipeline) -> float:
        """The family's training loss on the held-out images, chunk k's draws from `chunk_generator(seed + 3, k)`."""
        total, batch_size = 0.0, self.args.eval_batch_size
        for chunk, images in enumerate(self.held_out.split(batch_size)):
            generator = chunk_generator(self.args.seed + LOSS_SEED_OFFSET, chunk)
            x0 = uint8_to_model(images).to(pipe.device)
            terms = self.family.loss_terms(_unconditional(pipe.unet, len(x0)), pipe.scheduler, x0, generator=generator)
            total += terms.loss.double().sum().item()
        return total / len(self.held_out)

    def _frechet(self, pipe: ShareablePipeline) -> dict[str, float]:
        args = self.args
        samples = generate_samples(
            pipe, args.eval_num_samples, args.eval_batch_size, args.seed, **self.family.sample_kwargs()
        )
        features, _ = classifier_outputs(self.classifier, samples, args.eval_batch_size)
        distance = frechet_distance(*feature_statistics(features), *self.reference)
        results = {"classifier_frechet_distance": distance}
        if self.frechet_baseline:  # the offline report's ratio with --baseline_draws 1
            results["classifier_frechet_distance_ratio"] = distance / self.frechet_baseline
        return results

    def cost(self) -> str:
        """The network calls of one evaluation, in words (printed at the start of the run)."""
        args, n = self.args, len(self.held_out)
        parts = [f"held-out loss on {n} images ({n} UNet calls)"]
        if self.family.name == "ddpm":
            strata = min(args.eval_elbo_strata, self.family.args.ddpm_num_steps)
            parts.append(f"stratified ELBO ({n} x {strata} = {n * strata} UNet calls)")
        if args.eval_ode_images:
            parts.append(f"ODE bits/dim of {min(args.eval_ode_images, n)} images (adaptive: hundreds of calls each)")
        if self.classifier is not None:
            parts.append(f"{args.eval_num_samples} samples with the preview sampler for the Fréchet distance")
        return "; ".join(parts)


def _unconditional(unet, batch_size: int):
    """The UNet as the loss calls it: a class-conditional one given the null class (the model that sampling without
    labels uses)."""
    classes = unet.config.num_class_embeds
    if classes is None:
        return unet
    return conditional_model(unet, torch.full((batch_size,), classes - 1, dtype=torch.long, device=unet.device))


def check_evaluation_data(args: TrainingArguments, dataset) -> None:
    """Refuse `--keep_best_by classifier_frechet_distance` on a training split without labels, before any model is
    built (the feature classifier trains on the labels).

    Raises:
        `ValueError`: naming the flag and the columns the split has.
    """
    if args.keep_best_by == "classifier_frechet_distance" and "label" not in dataset.column_names:
        raise ValueError(
            "--keep_best_by classifier_frechet_distance needs a dataset with labels (a 'label' column, or one "
            f"sub-folder per class for --train_data_dir) to train its feature classifier; this one has the columns "
            f"{dataset.column_names}. Accepted instead: held_out_loss, ode_bits_per_dim (DDPM also "
            "held_out_bits_per_dim)."
        )


def build_evaluator(
    args: TrainingArguments, family: Family, channels: int, train: datasets.Dataset
) -> TrainingEvaluator:
    """Load the held-out images and, when there are samples to score, the feature classifier and the reference
    statistics (main process), the baseline's images taken from `train`, the run's training split (undecoded). A
    dataset without labels has no classifier: the Fréchet distance is skipped with a warning.

    Raises:
        `ValueError`: `--keep_best_by classifier_frechet_distance` and no labels in the held-out split (those in the
            training split were checked before any model was built, by `check_evaluation_data`).
    """
    source = {
        "dataset_name": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "train_data_dir": args.train_data_dir,
        "image_column": args.image_column,
        "dataset_cache_dir": args.cache_dir,
    }
    # the whole held-out split, decoded once: the Fréchet distance's reference, as in the offline evaluation
    held_out, _ = load_images(**source, split="test", resolution=args.resolution, channels=channels)
    evaluator = TrainingEvaluator(args, family, held_out[: args.eval_num_images])
    if not args.eval_num_samples:
        return evaluator
    resolution = default_classifier_resolution(args.dataset_name, args.train_data_dir, args.resolution)
    try:
        classifier = load_or_train_classifier(**source, resolution=resolution, channels=channels, seed=CLASSIFIER_SEED)
    except MissingLabelsError as err:  # labels in the training split only: check_evaluation_data let it through
        if args.keep_best_by == "classifier_frechet_distance":
            raise ValueError(f"--keep_best_by classifier_frechet_distance: {err}") from None
        logger.warning("the in-training Fréchet distance is skipped: %s", err)
        return evaluator
    # the offline evaluation's baseline draw 0: as many training images as samples; only those are decoded
    (rows,) = baseline_draw_rows(len(train), args.eval_num_samples, 1, args.seed)
    baseline_images, _ = decode_images(train.select(rows, keep_in_memory=True), args.resolution, channels)
    evaluator.classifier = classifier
    evaluator.reference = feature_statistics(classifier_outputs(classifier, held_out, args.eval_batch_size)[0])
    baseline = classifier_outputs(classifier, baseline_images, args.eval_batch_size)[0]
    evaluator.frechet_baseline = frechet_distance(*feature_statistics(baseline), *evaluator.reference)
    return evaluator


def is_better(metric: str | None, result: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether `result` beats `best` on `metric` (lower is better for every metric); NaN never does."""
    if metric is None or not math.isfinite(result.get(metric, math.nan)):
        return False
    return best is None or result[metric] < best[metric]


def save_best(pipe: ShareablePipeline, output_dir: str, result: dict[str, Any]) -> None:
    """Publish `pipe` as `<output_dir>/best` (one switch of the folder), with the evaluation that chose it."""
    with atomic_directory(Path(output_dir) / BEST_DIR, keep=False) as staging:
        pipe.write_pipeline_files(staging)
        (staging / BEST_RECORD).write_text(dumps(result, indent=2))


def read_best(output_dir: str, metric: str | None, evaluations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation of the pipeline kept in `<output_dir>/best` on `metric`, when it is one of `evaluations`
    (those the resumed checkpoint recorded: this run's lineage up to its step), else None.

    A `best/` of another run in a reused folder, or of a later part of this run that the resume discards, is not
    compared against: the next evaluation replaces it.
    """
    path = Path(output_dir) / BEST_DIR / BEST_RECORD
    if metric is None or not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get(metric), float):
        return None
    if not any(e.get("step") == record.get("step") and e.get(metric) == record[metric] for e in evaluations):
        logger.warning(
            "%s holds the pipeline of an evaluation this run did not make (step %s); the next evaluation replaces it",
            path.parent,
            record.get("step"),
        )
        return None
    return record


def plot_stratum_terms(points: list[tuple[float, float]], path: Path) -> None:
    """The stratified ELBO's mean term per stratum against its mean timestep (log y)."""
    line_plot(
        {"ELBO term": points},
        path,
        title="Mean ELBO term per stratum (bits/dim per timestep, log scale)",
        xlabel="timestep index t",
        ylabel="bits/dim",
        log_y=True,
    )
