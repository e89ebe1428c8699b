"""An offline feature network for sample-quality metrics: a small CNN classifier trained on the dataset itself.

FID needs Inception weights, which no installed package ships; without a network the evaluation measures sample
quality in the feature space of a classifier trained on the TRAINING split of the same dataset (its penultimate
layer), and reports its held-out accuracy next to every number it produces. Training is seeded and deterministic,
and the result is cached on disk (safetensors weights + a JSON description), keyed by the dataset, the resolution,
the channels, the seed, the training settings and `CLASSIFIER_VERSION`.

Cache folder: `cache_dir` if given, else `$HF_DDPM_NCSN_CACHE/classifiers`, else `~/.cache/hf_ddpm_ncsn/classifiers`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..data import DIGITS, ImageTransform, load_image_dataset
from ..images import model_to_uint8
from ..sharing.atomic import atomic_write_bytes, atomic_write_text

# Bump when the architecture or the training recipe changes: cached classifiers of another version are not reused.
CLASSIFIER_VERSION = "v2"
CACHE_ENV = "HF_DDPM_NCSN_CACHE"
# fixed, not an evaluation's seed: every evaluation of a dataset measures in the same feature space
CLASSIFIER_SEED = 0


class MissingLabelsError(ValueError):
    """The dataset has no label column, so no classifier (and no classifier-based metric) can be trained."""


class FeatureClassifier(nn.Module):
    """A small CNN on float images in [0, 1] of shape (N, C, resolution, resolution).

    Two 3×3 convolutions, then one (average pool, convolution) stage per halving down to 8 pixels, a 4×4 average
    pool, a fully connected layer of `feature_dim` units (the features) and the class logits. The features are
    multiplied by `feature_scale`, fixed after training so that their mean squared value on the training images is
    1: KID's kernel (x·y / F + 1)³ then works at the scale it was designed for (Inception pool features).

    Args:
        in_channels (`int`): 1 (grey) or 3 (RGB).
        resolution (`int`): height and width of the input images.
        num_classes (`int`): number of classes K.
        width (`int`, defaults to 32): channels of the first convolution (the others have twice as many).
        feature_dim (`int`, defaults to 64): size F of the feature layer.
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "resolution": resolution,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
        ]
        for _ in range(max(0, math.ceil(math.log2(resolution / 8)))):
            layers += [nn.AvgPool2d(2), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))
        self.info: dict = {}  # provenance and held-out accuracy, filled by load_or_train_classifier

    def _check(self, images: torch.Tensor) -> None:
        expected = (self.config["in_channels"], self.config["resolution"], self.config["resolution"])
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"the classifier takes float images of shape (N, {', '.join(map(str, expected))}) in [0, 1], got "
                f"{tuple(images.shape)}; resize them to the classifier's resolution first"
            )

    def _hidden(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        return self.body(images * 2 - 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, F) of images (N, C, H, W) in [0, 1], times `feature_scale`."""
        return self._hidden(images) * self.feature_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, K)."""
        return self.head(self._hidden(images))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class distributions (N, K)."""
        return self.forward(images).softmax(dim=1)

    def features_and_probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features(images)` and `probabilities(images)` from one pass."""
        hidden = self._hidden(images)
        return hidden * self.feature_scale, self.head(hidden).softmax(dim=1)


def load_images(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    resolution: int = 8,
    channels: int = 1,
    dataset_config_name: str | None = None,
    dataset_cache_dir: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One split of a dataset as uint8 images, prepared as for training (`hf_ddpm_ncsn.data.ImageTransform` with a
    center crop), with its labels when the dataset has a label column.

    Args:
        dataset_name (`str`, *optional*): a `datasets` name, or `None` / `"digits"` for the embedded digits.
        train_data_dir (`str`, *optional*): a local image folder instead (sub-folders give labels).
        image_column (`str`, *optional*): the image column (default: the first image feature).
        split (`str`, defaults to `"train"`): `"train"`, or `"test"` for the held-out images.
        resolution (`int`, defaults to 8): output height and width.
        channels (`int`, defaults to 1): 1 or 3.
        dataset_config_name (`str`, *optional*): the dataset's configuration, as for training.
        dataset_cache_dir (`str`, *optional*): where `datasets` caches downloads (training's `--cache_dir`).

    Returns:
        `tuple`: uint8 images (N, C, resolution, resolution) and int64 labels (N,), or `None` without labels.
    """
    dataset = load_image_dataset(
        dataset_name=dataset_name,
        dataset_config_name=dataset_config_name,
        train_data_dir=train_data_dir,
        image_column=image_column,
        split=split,
        cache_dir=dataset_cache_dir,
    )
    return decode_images(dataset, resolution, channels)


def decode_images(
    dataset: datasets.Dataset, resolution: int = 8, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The images of a `load_image_dataset` split (or of its `select`ed rows: only those are decoded) as uint8,
    prepared as for training, and its labels when it has a label column (see `load_images`)."""
    transform = ImageTransform(resolution, channels, center_crop=True)
    pixels = torch.stack([transform.transform_image(image) for image in dataset["image"]])
    images = model_to_uint8(pixels)
    labels = torch.tensor(dataset["label"], dtype=torch.int64) if "label" in dataset.column_names else None
    return images, labels


def default_classifier_resolution(dataset_name: str | None, train_data_dir: str | None, resolution: int) -> int:
    """The classifier's input size for images of `resolution`: the digits' native 8, else the images' size up to
    32."""
    if train_data_dir is None and dataset_name in (None, DIGITS):
        return 8
    return min(resolution, 32)


def default_cache_dir() -> Path:
    """`$HF_DDPM_NCSN_CACHE/classifiers`, or `~/.cache/hf_ddpm_ncsn/classifiers`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "hf_ddpm_ncsn")
    return Path(root) / "classifiers"


def cache_key(dataset_id: str, resolution: int, channels: int, seed: int, settings: dict) -> str:
    """File stem of a cached classifier: readable fields, then a hash of everything that shapes the weights."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_id).strip("_")[-48:] or "dataset"
    identity = json.dumps([dataset_id, resolution, channels, seed, CLASSIFIER_VERSION, settings], sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{slug}-{resolution}px-{channels}ch-seed{seed}-{CLASSIFIER_VERSION}-{digest}"


@dataclass(frozen=True)
class TrainingSettings:
    """How the classifier is trained (part of its cache key).

    Args:
        epochs (`int`, defaults to 20): passes over the training split.
        batch_size (`int`, defaults to 64): images per step.
        learning_rate (`float`, defaults to 2e-3): Adam's step size.
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 2e-3


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    settings: TrainingSettings = TrainingSettings(),  # noqa: B008 (frozen, so sharing the default is safe)
) -> FeatureClassifier:
    """Train a `FeatureClassifier` with Adam and cross-entropy; seeded, without touching the global RNG.

    Training runs on one CPU thread: the summation order of a multi-threaded convolution depends on the thread
    count, so the weights would differ (by ~1e-6) from machine to machine; and with batches this small
    (64 images of 8×8 for the digits) a second thread costs more in synchronisation than it saves (5× slower on a
    busy 2-core machine).

    Args:
        images (`torch.Tensor`): uint8 (N, C, H, W) training images.
        labels (`torch.Tensor`): int64 (N,) labels in [0, num_classes).
        num_classes (`int`): K.
        seed (`int`, defaults to 0): seed of the initialisation and of the batch order.
        settings (`TrainingSettings`, *optional*): epochs, batch size, learning rate.
    """
    with _one_thread():
        return _train(images, labels, num_classes, seed, settings)


@contextmanager
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, settings: TrainingSettings
) -> FeatureClassifier:
    inputs = images.float() / 255
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(images.shape[1], images.shape[-1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(settings.epochs):
        for rows in torch.randperm(len(inputs), generator=generator).split(settings.batch_size):
            loss = nn.functional.cross_entropy(model(inputs[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        mean_square = torch.cat([model._hidden(batch).pow(2) for batch in inputs.split(512)]).mean()
        model.feature_scale.fill_(mean_square.clamp(min=1e-12).rsqrt())
    return model


@torch.no_grad()
def accuracy(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of uint8 images whose most probable class is their label."""
    predictions = torch.cat([model(batch.float() / 255).argmax(dim=1) for batch in images.split(batch_size)])
    return float((predictions == labels).double().mean())


def load_or_train_classifier(
    dataset_name: str = DIGITS,
    resolution: int = 8,
    channels: int = 1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    dataset_config_name: str | None = None,
    dataset_cache_dir: str | None = None,
    **train_kwargs,
) -> FeatureClassifier:
    """The classifier of a dataset: loaded from the cache, or trained on its train split and cached.

    The returned module is in eval mode and carries `info` (a dict: `held_out_accuracy` on the held-out split,
    `train_seconds`, `num_train_images`, `num_held_out_images`, `cache_file`, the architecture and the settings).

    Args:
        dataset_name (`str`, defaults to `"digits"`): a `datasets` name, or `"digits"` (`None` also means digits).
        resolution (`int`, defaults to 8): input height and width.
        channels (`int`, defaults to 1): 1 or 3.
        seed (`int`, defaults to 0): training seed.
        cache_dir (`str` or `os.PathLike`, *optional*): cache folder (default: see the module docstring).
        train_data_dir (`str`, *optional*): a local image folder instead of `dataset_name` (sub-folders give labels).
        image_column (`str`, *optional*): the image column.
        dataset_config_name (`str`, *optional*): the dataset's configuration (part of the cache key).
        dataset_cache_dir (`str`, *optional*): where `datasets` caches downloads (not part of the cache key).
        train_kwargs: fields of `TrainingSettings` (`epochs`, `batch_size`, `learning_rate`).

    Raises:
        `MissingLabelsError` (a `ValueError`): the dataset has no label column.
    """
    dataset_id = os.path.abspath(train_data_dir) if train_data_dir is not None else (dataset_name or DIGITS)
    if dataset_config_name is not None and train_data_dir is None:
        dataset_id = f"{dataset_id}:{dataset_config_name}"
    training = TrainingSettings(**train_kwargs)
    settings = {"image_column": image_column, **asdict(training)}
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = cache_key(dataset_id, resolution, channels, seed, settings)
    weights_path, info_path = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if info_path.is_file() and weights_path.is_file():
        return _load(weights_path, info_path)

    source = {
        "dataset_name": None if train_data_dir else dataset_name,
        "train_data_dir": train_data_dir,
        "image_column": image_column,
        "resolution": resolution,
        "channels": channels,
        "dataset_config_name": dataset_config_name,
        "dataset_cache_dir": dataset_cache_dir,
    }
    model = _train_on_dataset(source, dataset_id, seed, training, settings)
    _save(model, weights_path, info_path)
    model.info["cache_file"] = str(weights_path)
    return model


def _train_on_dataset(
    source: dict, dataset_id: str, seed: int, training: TrainingSettings, settings: dict
) -> FeatureClassifier:
    """Train on the train split of `source` (`load_images` arguments) and describe the result in `info` (with
    `settings`, the cache key's description of the training)."""
    train_images, train_labels = load_images(**source, split="train")
    held_out_images, held_out_labels = load_images(**source, split="test")
    if train_labels is None or held_out_labels is None:
        raise MissingLabelsError(
            f"The dataset {dataset_id!r} has no label column (a datasets.ClassLabel or an integer 'label'/'labels' "
            "column, or one sub-folder per class for train_data_dir): the classifier-based metrics (classifier "
            "Fréchet distance, classifier KID, class coverage) need labels to train their feature network."
        )
    num_classes = int(max(train_labels.max(), held_out_labels.max())) + 1
    start = time.perf_counter()
    model = train_classifier(train_images, train_labels, num_classes, seed=seed, settings=training)
    train_seconds = time.perf_counter() - start
    model.info = {
        "dataset": dataset_id,
        "version": CLASSIFIER_VERSION,
        "seed": seed,
        "settings": settings,
        "architecture": model.config,
        "held_out_accuracy": accuracy(model, held_out_images, held_out_labels),
        "train_seconds": train_seconds,
        "num_train_images": len(train_images),
        "num_held_out_images": len(held_out_images),
    }
    return model


def _save(model: FeatureClassifier, weights_path: Path, info_path: Path) -> None:
    """Write the weights, then the description, each atomically (`hf_ddpm_ncsn.sharing.atomic`). The description is
    written last and a cache entry is only read when both files exist, so a crash at any point leaves either no
    entry or a complete one, never weights that a later run loads half-written."""
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.contiguous() for name, value in model.state_dict().items()}
    atomic_write_bytes(weights_path, safetensors_bytes(tensors))
    atomic_write_text(info_path, json.dumps(model.info, indent=2))


def _load(weights_path: Path, info_path: Path) -> FeatureClassifier:
    info = json.loads(info_path.read_text(encoding="utf-8"))
    model = FeatureClassifier(**info["architecture"])
    model.load_state_dict(load_file(str(weights_path)))
    model.info = {**info, "cache_file": str(weights_path)}
    return model.eval()
