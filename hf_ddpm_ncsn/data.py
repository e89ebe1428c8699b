"""Image data for the training scripts: the embedded digits, a folder of images, or a `datasets` dataset.

The arguments follow diffusers' `examples/unconditional_image_generation/train_unconditional.py`
(`dataset_name`, `dataset_config_name`, `train_data_dir`, `image_column`, `resolution`, `center_crop`,
`random_flip`, `cache_dir`). Every source ends up as a `datasets.Dataset` with an `"image"` column
(a `datasets.Image()` feature) and, when the source has one, a `"label"` column.

Without `dataset_name` and `train_data_dir` the data is scikit-learn's `load_digits` (1,797 grey 8×8 images,
10 classes), which ships inside the scikit-learn wheel: nothing is downloaded.

Held-out split rule. A source that has only a `"train"` split (the digits, a flat image folder, many Hub
datasets) is split deterministically: with n images and k = max(1, round(n · validation_fraction)), the
held-out rows are `sorted(numpy.random.default_rng(seed).permutation(n)[:k])` and the train rows are all the
others, both kept in their original order. `"test"` and `"validation"` both name that held-out set. A source
that has a held-out split of its own is used as it is.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .images import uint8_to_model

# the largest transformed dataset kept in memory when the transform is deterministic (center crop, no flip)
PRECOMPUTE_MAX_BYTES = 512 * 2**20

DIGITS = "digits"
HELD_OUT_SPLITS = ("test", "validation")

# "LA" counts as grey: its alpha is dropped, the same way "RGBA" becomes "RGB".
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# PIL's convert("L") clips these at 255 instead of rescaling, so 16-bit PNGs would come out almost white.
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})

_DIGITS_LEVELS = 16


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> datasets.Dataset:
    """Load one split of an image dataset with its images in an `"image"` column.

    Args:
        dataset_name (`str`, *optional*):
            A Hub dataset name, or a local path/script that `datasets.load_dataset` understands. `None` or
            `"digits"` selects the embedded scikit-learn digits.
        dataset_config_name (`str`, *optional*):
            The dataset configuration, passed to `datasets.load_dataset`.
        train_data_dir (`str`, *optional*):
            A folder of images, loaded with the `imagefolder` builder (sub-folders become class labels; `train/`
            and `test/` sub-folders become splits). Mutually exclusive with `dataset_name`.
        image_column (`str`, *optional*):
            The column holding the images; by default the first column with a `datasets.Image` feature.
        split (`str`, defaults to `"train"`):
            `"train"`, `"test"` or `"validation"` (or any split the source has). See the module docstring for
            how a held-out split is carved out of a source that has none.
        cache_dir (`str`, *optional*):
            Where `datasets` caches downloads and prepared files.
        validation_fraction (`float`, defaults to 0.1):
            Fraction of the images held out when the source has no held-out split; must lie in (0, 1).
        seed (`int`, defaults to 0):
            Seed of the permutation that picks the held-out rows.

    Returns:
        `datasets.Dataset`: the split, with columns `"image"` and, when the source has labels, `"label"`.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must lie strictly between 0 and 1.")
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(
            f"Both dataset_name={dataset_name!r} and train_data_dir={train_data_dir!r} were given: pass only one "
            "(dataset_name for a Hub dataset, train_data_dir for a local folder of images)."
        )
    if train_data_dir is not None:
        splits = _load_image_folder(train_data_dir, cache_dir)
    elif dataset_name is None or dataset_name == DIGITS:
        if dataset_config_name is not None:
            raise ValueError(f"dataset_config_name={dataset_config_name!r} has no meaning for the {DIGITS!r} data.")
        splits = datasets.DatasetDict(train=_digits_dataset())
    else:
        splits = _load_named_dataset(dataset_name, dataset_config_name, cache_dir)
    dataset = _select_split(splits, split, validation_fraction, seed)
    return _standardize_columns(dataset, image_column)


def digits_arrays(
    split: str = "train", validation_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The raw digits of one split, with the same rows as `load_image_dataset(split=split, ...)`.

    Args:
        split (`str`, defaults to `"train"`):
            `"train"`, or `"test"` / `"validation"` for the held-out rows.
        validation_fraction (`float`, defaults to 0.1):
            Fraction of the 1,797 images held out; must lie in (0, 1).
        seed (`int`, defaults to 0):
            Seed of the permutation that picks the held-out rows.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: uint8 images of shape (N, 8, 8) with values round(v · 255 / 16) for the
        17 grey levels v = 0..16, and int64 labels of shape (N,).
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must lie strictly between 0 and 1.")
    images, labels = _digits()
    train_rows, held_out_rows = _split_rows(len(images), validation_fraction, seed)
    if split == "train":
        rows = train_rows
    elif split in HELD_OUT_SPLITS:
        rows = held_out_rows
    else:
        raise ValueError(f"split={split!r} is not one of the digits splits: 'train', 'test', 'validation'.")
    return images[rows], labels[rows]


def check_images(dataset: datasets.Dataset, image_column: str = "image", max_images: int | None = None) -> None:
    """Decode every image (or the first `max_images`) and raise if any of them cannot be decoded.

    Each image is fully decoded (`PIL.Image.load`), since a header check (`verify`) misses truncated files, and
    then dropped. Run this before training: `datasets` decodes lazily, so a corrupt file would otherwise stop
    a run in the middle of an epoch.

    Args:
        dataset (`datasets.Dataset`):
            The dataset to check.
        image_column (`str`, defaults to `"image"`):
            The column holding the images (a `datasets.Image` feature).
        max_images (`int`, *optional*):
            Check only the first `max_images` rows.

    Raises:
        `ValueError`: listing each image that failed, by row and by file path when the dataset knows it.
    """
    raw = _undecoded_images(dataset, image_column)
    if max_images is not None:
        raw = raw.select(range(min(max_images, len(raw))))
    failures = []
    row = 0
    for batch in raw.iter(batch_size=256):
        for item in batch[image_column]:
            error = _decode_error(item)
            if error is not None:
                failures.append(f"  row {row}: {_describe(item)}: {error}")
            row += 1
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(raw)} images in column {image_column!r} could not be decoded; remove or "
            "replace them before training:\n" + "\n".join(failures)
        )


def infer_channels(dataset: datasets.Dataset, image_column: str = "image", num_images: int = 16) -> int:
    """The number of channels to train with: 1 when the first images are all grey, else 3.

    Grey modes are "1", "L", "LA" (alpha dropped), "I", "I;16*" and "F"; every other mode ("RGB", "RGBA",
    "P", "CMYK", ...) means 3. Only image headers are read. Images of the other kind found later in the dataset
    are converted by `ImageTransform` (RGB to grey by ITU-R 601-2 luma, grey to RGB by repeating the channel).

    Args:
        dataset (`datasets.Dataset`):
            The dataset to look at.
        image_column (`str`, defaults to `"image"`):
            The column holding the images.
        num_images (`int`, defaults to 16):
            How many leading images to look at.

    Returns:
        `int`: 1 or 3.
    """
    raw = _undecoded_images(dataset, image_column)
    if len(raw) == 0:
        raise ValueError("Cannot infer the number of channels of an empty dataset; pass channels explicitly.")
    items = raw.select(range(min(num_images, len(raw))))[image_column]
    return 1 if all(_image_mode(item) in GREY_MODES for item in items) else 3


class ImageTransform:
    """PIL images to float32 tensors (C, H, W) in [-1, 1], for `datasets.Dataset.set_transform`.

    Steps: convert to "L" (channels=1) or "RGB" (channels=3; alpha is dropped, a palette is expanded, 16-bit grey
    is rescaled by 1/257); resize the shorter side to `resolution` with bilinear filtering (PIL widens the filter
    when it shrinks, so downscaling is antialiased; the 8×8 digits are upscaled bilinearly, which avoids the
    overshoot of bicubic); crop `resolution`×`resolution` at the center or at a random offset; flip left-right
    with probability 0.5 only when `random_flip` is set (flipped digits are not digits).

    The random crop offsets and flips come from a `numpy.random.Generator` seeded with `seed`. In a DataLoader
    worker it is reseeded from (`seed`, the worker's seed): workers then draw different flips, and new ones
    every epoch, while the run stays reproducible through the DataLoader's own generator.

    Args:
        resolution (`int`):
            Output height and width.
        channels (`int`):
            1 for grey, 3 for RGB.
        center_crop (`bool`, defaults to `False`):
            Crop at the center instead of at a random offset.
        random_flip (`bool`, defaults to `False`):
            Flip left-right with probability 0.5.
        seed (`int`, *optional*):
            Seed of the crop/flip randomness; `None` draws fresh entropy.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        center_crop: bool = False,
        random_flip: bool = False,
        seed: int | None = None,
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution={resolution} must be a positive number of pixels.")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (grey) or 3 (RGB).")
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_worker_seed: int | None = None

    def __call__(self, examples: dict) -> dict:
        """Transform a batch `{"image": [PIL.Image, ...], ...}` into `{"pixel_values": [tensor, ...]}`.

        A `"label"` entry is passed through; other entries are dropped.
        """
        output = {"pixel_values": [self.transform_image(image) for image in examples["image"]]}
        if "label" in examples:
            output["label"] = examples["label"]
        return output

    def transform_image(self, image: Image.Image) -> torch.Tensor:
        """Transform one PIL image into a float32 tensor of shape (channels, resolution, resolution) in [-1, 1]."""
        image = _convert_mode(image, "L" if self.channels == 1 else "RGB")
        image = self._crop(self._resize(image))
        if self.random_flip and self._generator().random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(image)

    def _resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)

    def _crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if self.center_crop:
            left, top = round((width - self.resolution) / 2), round((height - self.resolution) / 2)
        else:
            rng = self._generator()
            left = int(rng.integers(width - self.resolution + 1))
            top = int(rng.integers(height - self.resolution + 1))
        return image.crop((left, top, left + self.resolution, top + self.resolution))

    def _generator(self) -> np.random.Generator:
        # Each DataLoader worker receives a pickled copy with the same state: without reseeding, every worker,
        # in every epoch, would repeat the same draws.
        worker = torch.utils.data.get_worker_info()
        worker_seed = None if worker is None else worker.seed
        if self._rng is None or worker_seed != self._rng_worker_seed:
            entropy = [s for s in (self.seed, worker_seed) if s is not None] or None
            self._rng = np.random.default_rng(entropy)
            self._rng_worker_seed = worker_seed
        return self._rng


def make_dataloader(
    dataset: datasets.Dataset,
    *,
    resolution: int,
    channels: int | None = None,
    batch_size: int,
    center_crop: bool = False,
    random_flip: bool = False,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A plain, seeded `DataLoader` of `{"pixel_values": (B, C, H, W) float32 in [-1, 1], "label": (B,)}`.

    It is a plain `torch.utils.data.DataLoader` whose shuffling uses `torch.Generator().manual_seed(seed)`, so the
    batch order is reproducible and `accelerator.prepare` / `accelerator.skip_first_batches` can resume it.

    Args:
        dataset (`datasets.Dataset`):
            A dataset with an `"image"` column, as returned by `load_image_dataset`.
        resolution (`int`):
            Output height and width.
        channels (`int`, *optional*):
            1 or 3; by default `infer_channels(dataset)`.
        batch_size (`int`):
            Images per batch.
        center_crop (`bool`, defaults to `False`):
            Center crop instead of random crop.
        random_flip (`bool`, defaults to `False`):
            Random horizontal flips (leave off for digits and text).
        shuffle (`bool`, defaults to `True`):
            Reshuffle every epoch.
        num_workers (`int`, defaults to 0):
            DataLoader worker processes.
        seed (`int`, defaults to 0):
            Seed of the shuffling and of the crop/flip randomness.
        drop_last (`bool`, defaults to `True`):
            Drop the last incomplete batch.

    Returns:
        `torch.utils.data.DataLoader`
    """
    if "image" not in dataset.column_names:
        raise ValueError(
            f"The dataset has no 'image' column (columns: {dataset.column_names}); load it with load_image_dataset."
        )
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the dataset ({len(dataset)} images), so drop_last=True would "
            "yield no batch: lower batch_size or pass drop_last=False."
        )
    if channels is None:
        channels = infer_channels(dataset)
    transform = ImageTransform(resolution, channels, center_crop=center_crop, random_flip=random_flip, seed=seed)
    deterministic = center_crop and not random_flip
    fits = len(dataset) * channels * resolution**2 * 4 <= PRECOMPUTE_MAX_BYTES
    return DataLoader(
        PrecomputedImages(dataset, transform) if deterministic and fits else dataset.with_transform(transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


class PrecomputedImages(torch.utils.data.Dataset):
    """A deterministic transform applied once to every image, kept as one tensor: decoding and resizing every
    epoch would cost ~5% of a small model's CPU training step."""

    def __init__(self, dataset: datasets.Dataset, transform: ImageTransform):
        out = transform({k: dataset[k] for k in dataset.column_names})
        self.pixel_values = torch.stack(out["pixel_values"])
        self.labels = torch.as_tensor(out["label"]) if "label" in out else None

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self.pixel_values[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes about a second to import and only the digits need it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / _DIGITS_LEVELS)).astype(np.uint8)
    images.flags.writeable = False  # the cached arrays are shared by every caller
    return images, digits.target.astype(np.int64)


def _digits_dataset() -> datasets.Dataset:
    images, labels = _digits()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images], "label": labels.tolist()},
        features=features,
    )


def _load_image_folder(train_data_dir: str, cache_dir: str | None) -> datasets.DatasetDict:
    folder = Path(train_data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"train_data_dir={train_data_dir!r} is not an existing directory: pass a folder of images "
            "(one sub-folder per class gives labels)."
        )
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    if not any(path.is_file() and path.suffix.lower() in extensions for path in folder.rglob("*")):
        raise FileNotFoundError(
            f"train_data_dir={train_data_dir!r} contains no image files (looked for {sorted(extensions)[:8]}...)."
        )
    return datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=cache_dir)


def _load_named_dataset(
    dataset_name: str, dataset_config_name: str | None, cache_dir: str | None
) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    except OSError as err:  # datasets and huggingface_hub report unreachable / unknown datasets as OSErrors
        config = "" if dataset_config_name is None else f" with dataset_config_name={dataset_config_name!r}"
        message = (
            f"Could not load dataset_name={dataset_name!r}{config} through datasets.load_dataset "
            f"({type(err).__name__}: {err}). Check the name, the network and HF_HUB_OFFLINE; "
            f"for local images pass train_data_dir=<folder> instead, or pass no dataset_name to use the embedded "
            f"{DIGITS!r} data, which needs no network."
        )
        error_type = next(t for t in (FileNotFoundError, ConnectionError, OSError) if isinstance(err, t))
        raise error_type(message) from err


def _select_split(splits: datasets.DatasetDict, split: str, validation_fraction: float, seed: int) -> datasets.Dataset:
    has_held_out = any(name in splits for name in HELD_OUT_SPLITS)
    if split in splits and (split != "train" or has_held_out):
        return splits[split]
    if "train" in splits and not has_held_out and split in ("train", *HELD_OUT_SPLITS):
        train_rows, held_out_rows = _split_rows(len(splits["train"]), validation_fraction, seed)
        return splits["train"].select(train_rows if split == "train" else held_out_rows)
    raise ValueError(f"split={split!r} is not available: the source has the splits {list(splits)}.")


def _split_rows(num_rows: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    num_held_out = max(1, round(num_rows * validation_fraction))
    if num_held_out >= num_rows:
        raise ValueError(
            f"Cannot hold out validation_fraction={validation_fraction} of {num_rows} images and keep a train split."
        )
    permutation = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(permutation[num_held_out:]), np.sort(permutation[:num_held_out])


def _standardize_columns(dataset: datasets.Dataset, image_column: str | None) -> datasets.Dataset:
    features = dataset.features
    if image_column is None:
        image_column = _find_image_column(features)
    elif image_column not in features:
        raise ValueError(
            f"image_column={image_column!r} is not a column of the dataset; available columns: {list(features)}."
        )
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(
            f"image_column={image_column!r} holds {features[image_column]}, not images (a datasets.Image feature); "
            f"available columns: {list(features)}."
        )
    renames = {image_column: "image"}
    label_column = _find_label_column(features, image_column)
    if label_column is not None:
        renames[label_column] = "label"
    dataset = dataset.select_columns(list(renames))
    return dataset.rename_columns({old: new for old, new in renames.items() if old != new})


def _find_image_column(features: datasets.Features) -> str:
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img"):
        if name in features:
            return name
    raise ValueError(f"The dataset has no image column; pass image_column, one of: {list(features)}.")


def _find_label_column(features: datasets.Features, image_column: str) -> str | None:
    for name, feature in features.items():
        if name != image_column and isinstance(feature, datasets.ClassLabel):
            return name
    for name in ("label", "labels"):
        feature = features.get(name)
        if name != image_column and isinstance(feature, datasets.Value) and feature.dtype.startswith("int"):
            return name
    return None


def _undecoded_images(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """The image column as raw `{"bytes", "path"}` rows, ignoring any transform set on the dataset."""
    if image_column not in dataset.column_names:
        raise ValueError(f"image_column={image_column!r} is not a column of the dataset: {dataset.column_names}.")
    raw = dataset.with_format(None).select_columns([image_column])
    return raw.cast_column(image_column, datasets.Image(decode=False))


def _open(item: dict) -> Image.Image:
    if item.get("bytes") is not None:
        return Image.open(io.BytesIO(item["bytes"]))
    return Image.open(item["path"])


def _decode_error(item: dict | None) -> str | None:
    if item is None or (item.get("bytes") is None and item.get("path") is None):
        return "no image data"
    try:
        with _open(item) as image:
            image.load()
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... depending on the plugin
        return f"{type(err).__name__}: {err}"
    return None


def _describe(item: dict | None) -> str:
    path = None if item is None else item.get("path")
    return path if path else "(in-memory image)"


def _image_mode(item: dict) -> str:
    with _open(item) as image:  # opening reads only the header
        return image.mode


def _convert_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.rint(np.asarray(image, dtype=np.float64) / 257)
        image = Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        # PIL warns when a palette with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return uint8_to_model(torch.from_numpy(np.ascontiguousarray(pixels)))
