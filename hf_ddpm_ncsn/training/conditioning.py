"""Class conditioning in training (`--class_conditional`): the classes of the dataset, and the labels the UNet
sees, replaced by the null class with probability `--class_dropout_prob` so that one network learns both the
conditional and the unconditional model that classifier-free guidance combines (`pipelines.guidance`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import datasets
import torch


def dataset_class_names(dataset: datasets.Dataset) -> list[str]:
    """The names of the classes 0..K-1 of a labelled dataset: its `ClassLabel` names, else the label values.

    Raises:
        `ValueError`: the dataset has no labels, or labels that are not 0..K-1.
    """
    if "label" not in dataset.column_names:
        raise ValueError(
            f"--class_conditional needs a dataset with labels (a 'label' or 'labels' column, or one sub-folder per "
            f"class with --train_data_dir); this one has only the columns {dataset.column_names}"
        )
    feature = dataset.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset["label"]))
    if not all(isinstance(v, int) for v in values) or values[0] < 0:
        raise ValueError(f"--class_conditional needs integer labels 0..K-1, got the values {values[:10]}")
    return [str(v) for v in range(values[-1] + 1)]


def drop_labels(labels: torch.Tensor, null_class: int, prob: float) -> torch.Tensor:
    """`labels` with each one replaced by `null_class` with probability `prob`.

    The draw comes from torch's global generator on the labels' device, the one the timesteps and the noise of the
    loss use: `accelerate` seeds it (`set_seed`) and saves and restores it with every checkpoint, so a resumed run
    drops the same labels as an uninterrupted one.
    """
    drop = torch.rand(labels.shape, device=labels.device) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def conditional_model(unet: Callable, class_labels: torch.Tensor) -> Callable:
    """The (x, timestep) -> output callable the losses take, with the labels bound."""
    return functools.partial(unet, class_labels=class_labels)
