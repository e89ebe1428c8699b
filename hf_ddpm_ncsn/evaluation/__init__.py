"""Evaluate a trained NCSN or DDPM pipeline offline: likelihood, sample quality, memorisation, and a report.

`evaluate` runs everything and writes `report.json`, `samples.png` and (DDPM) `elbo_terms.png`:

- **Likelihood** (DDPM only; NCSN has no ELBO): test-set bits/dim from every term of the bound
  (`DDPMPosteriorPipeline.elbo`), and the unbiased stratified estimate of `hf_ddpm_ncsn.likelihood`
  (log-spaced strata), which needs K instead of T network calls per image.
- **The likelihood's reference models** (every family): the bits/dim of three simple models fitted on the training
  split, on the same held-out images (`hf_ddpm_ncsn.likelihood.histogram_baselines`): a per-pixel histogram
  (add-0.01 and add-one smoothing), one grey-value histogram shared by all pixels (add-0.01), and the uniform
  distribution over the grey levels that occur in the training split or the held-out images. Every bits/dim is
  printed beside them.
- **Sample quality without a network**: a Fréchet distance and a kernel distance (KID's estimator) in the feature
  space of a classifier trained on the dataset's train split (`feature_classifier`), and the class coverage of the
  samples. These are not FID: they are named `classifier_*`, and each one is reported beside its **real-vs-real
  baseline**, the same number for as many training images in place of the samples, against the same held-out
  images. A model is as good as real data by this measure when it reaches the baseline.
- **Memorisation**: the pixel distance from each sample to its nearest training image, beside the same distance for
  held-out real images; a ratio well below 1 means the model reproduces training images.
- **FID / KID with Inception**, only from a local feature-extractor file (`inception_weights`).

Modules, one job each:

- `report`: `evaluate` (the orchestration, step by step), `model_card_metrics`, `write_outputs`;
- `table`: `format_report`, the printed table;
- `loading`: `load_pipeline`, `default_output_dir`;
- `sample_quality`: sampling, classifier features, Fréchet / kernel distances, class coverage, memorisation;
- `likelihood_report`: the full and the stratified ELBO reports, the reference models' report, the ELBO-terms plot;
- `inception`: the optional local Inception extractor, FID and KID;
- `feature_classifier`: the offline feature network and its cache;
- `metrics`: the metrics as pure functions of features, probabilities and pixels;
- `arguments`: the command line of `scripts/evaluate.py`.

Every name below is importable from `hf_ddpm_ncsn.evaluation` itself; code that replaces one (a test's
monkeypatch) must do so in the module that looks it up, e.g. `hf_ddpm_ncsn.evaluation.report.generate_samples`.
"""

from .feature_classifier import FeatureClassifier, MissingLabelsError, load_images, load_or_train_classifier
from .inception import (
    INCEPTION_MISSING,
    INCEPTION_SIZE,
    inception_features,
    inception_metrics,
    load_inception_extractor,
)
from .likelihood_report import (
    ADD_ONE_SMOOTHING,
    BASELINE_MODELS,
    BASELINE_SMOOTHING,
    NCSN_HAS_NO_ELBO,
    likelihood_baselines_report,
    likelihood_report,
    plot_elbo_terms,
    stratified_likelihood,
)
from .loading import default_output_dir, load_pipeline
from .report import CLASSIFIER_SEED, GRID_IMAGES, evaluate, model_card_metrics, write_outputs
from .sample_quality import (
    check_sampling_arguments,
    classifier_outputs,
    feature_distances,
    generate_samples,
    memorisation,
    resize_images,
    sample_quality,
    to_unit_interval,
)
from .table import format_report

__all__ = [
    "ADD_ONE_SMOOTHING",
    "BASELINE_MODELS",
    "BASELINE_SMOOTHING",
    "CLASSIFIER_SEED",
    "GRID_IMAGES",
    "INCEPTION_MISSING",
    "INCEPTION_SIZE",
    "NCSN_HAS_NO_ELBO",
    "FeatureClassifier",
    "MissingLabelsError",
    "check_sampling_arguments",
    "classifier_outputs",
    "default_output_dir",
    "evaluate",
    "feature_distances",
    "format_report",
    "generate_samples",
    "inception_features",
    "inception_metrics",
    "likelihood_baselines_report",
    "likelihood_report",
    "load_images",
    "load_inception_extractor",
    "load_or_train_classifier",
    "load_pipeline",
    "memorisation",
    "model_card_metrics",
    "plot_elbo_terms",
    "resize_images",
    "sample_quality",
    "stratified_likelihood",
    "to_unit_interval",
    "write_outputs",
]
