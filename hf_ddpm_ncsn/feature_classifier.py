"""Moved to `hf_ddpm_ncsn.evaluation.feature_classifier`; this module keeps the old import path working."""

from .evaluation.feature_classifier import (
    CACHE_ENV,
    CLASSIFIER_VERSION,
    FeatureClassifier,
    MissingLabelsError,
    TrainingSettings,
    accuracy,
    cache_key,
    default_cache_dir,
    load_images,
    load_or_train_classifier,
    train_classifier,
)

__all__ = [
    "CACHE_ENV",
    "CLASSIFIER_VERSION",
    "FeatureClassifier",
    "MissingLabelsError",
    "TrainingSettings",
    "accuracy",
    "cache_key",
    "default_cache_dir",
    "load_images",
    "load_or_train_classifier",
    "train_classifier",
]
