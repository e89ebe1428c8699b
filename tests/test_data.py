import io
import pickle
import time
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm_ncsn.data import (
    DIGITS,
    ImageTransform,
    check_images,
    digits_arrays,
    infer_channels,
    load_image_dataset,
    make_dataloader,
)


def _save(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image if mode is None else image.convert(mode)).save(path)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _row_keys(dataset: datasets.Dataset) -> Counter:
    return Counter((row["label"], np.asarray(row["image"]).tobytes()) for row in dataset)


@pytest.fixture(scope="module")
def digits_train() -> datasets.Dataset:
    return load_image_dataset()


@pytest.fixture(scope="module")
def digits_test() -> datasets.Dataset:
    return load_image_dataset(DIGITS, split="test")


def _array_keys(images: np.ndarray, labels: np.ndarray) -> Counter:
    return Counter((int(y), x.tobytes()) for x, y in zip(images, labels, strict=True))


def test_digits_splits_partition_the_1797_images(digits_train, digits_test):
    from sklearn.datasets import load_digits

    source = load_digits()
    everything = _array_keys(np.rint(source.images * 255 / 16).astype(np.uint8), source.target)
    assert (len(digits_train), len(digits_test)) == (1617, 180)
    train_keys, test_keys = _row_keys(digits_train), _row_keys(digits_test)
    assert not set(train_keys) & set(test_keys)
    assert train_keys + test_keys == everything
    assert _array_keys(*digits_arrays("train")) == train_keys
    assert _array_keys(*digits_arrays("test")) == test_keys


def test_digits_grey_levels_and_labels(digits_train):
    assert isinstance(digits_train.features["image"], datasets.Image)
    assert digits_train.features["label"].names == [str(d) for d in range(10)]
    images, labels = digits_arrays("train")
    assert images.dtype == np.uint8 and images.shape == (1617, 8, 8)
    # 17 levels v = 0..16 map to round(v * 255 / 16): 0, 16, ..., 128 (v = 8 is 127.5), 143, ..., 255
    assert set(np.unique(images).tolist()) == {round(v * 255 / 16) for v in range(17)}
    assert set(labels.tolist()) == set(range(10))
    first = digits_train[0]
    assert first["image"].mode == "L" and first["image"].size == (8, 8)
    np.testing.assert_array_equal(np.asarray(first["image"]), images[0])
    assert first["label"] == labels[0]


def test_digits_held_out_split_follows_the_seed_and_fraction():
    test_images, _ = digits_arrays("test", validation_fraction=0.2, seed=1)
    assert len(test_images) == round(1797 * 0.2)
    np.testing.assert_array_equal(digits_arrays("validation", 0.2, 1)[0], test_images)
    assert not np.array_equal(digits_arrays("test", 0.2, 2)[0], test_images)
    with pytest.raises(ValueError, match="split='unlabeled'"):
        load_image_dataset(split="unlabeled")


def test_transform_grey_digits_to_16x16(digits_train):
    out = ImageTransform(resolution=16, channels=1)(digits_train[:4])
    assert set(out) == {"pixel_values", "label"}
    for tensor in out["pixel_values"]:
        assert tensor.shape == (1, 16, 16) and tensor.dtype == torch.float32
        assert tensor.min() >= -1 and tensor.max() <= 1
    white = ImageTransform(resolution=4, channels=1).transform_image(Image.new("L", (8, 8), 255))
    torch.testing.assert_close(white, torch.ones(1, 4, 4))


def test_transform_rgb_and_grey_conversions():
    rgb = Image.fromarray(_noise((10, 12, 3)))
    assert ImageTransform(resolution=8, channels=3).transform_image(rgb).shape == (3, 8, 8)
    grey_as_rgb = ImageTransform(resolution=8, channels=3).transform_image(Image.fromarray(_noise((8, 8))))
    torch.testing.assert_close(grey_as_rgb[0], grey_as_rgb[2])
    black = ImageTransform(resolution=8, channels=1).transform_image(Image.new("RGB", (8, 8)))
    torch.testing.assert_close(black, -torch.ones(1, 8, 8))
    # 16-bit grey is rescaled, not clipped at 255 as PIL's convert("L") does
    mid = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))
    torch.testing.assert_close(ImageTransform(8, 1).transform_image(mid), torch.full((1, 8, 8), 128 / 127.5 - 1))


def _columns_image(width: int = 40, height: int = 20) -> Image.Image:
    """An RGB image whose red channel at column x is 5x: its crop tells which columns it kept."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = 5 * np.arange(width, dtype=np.uint8)
    return Image.fromarray(pixels)


def _columns_of(tensor: torch.Tensor) -> np.ndarray:
    return np.rint((tensor[0, 0].numpy() + 1) * 127.5 / 5).astype(int)


def test_center_crop_keeps_the_middle_columns():
    out = ImageTransform(resolution=20, channels=3, center_crop=True).transform_image(_columns_image())
    assert out.shape == (3, 20, 20)
    np.testing.assert_array_equal(_columns_of(out), np.arange(10, 30))


def test_random_crop_is_a_seeded_window():
    def offsets(seed):
        transform = ImageTransform(resolution=20, channels=3, seed=seed)
        return [int(_columns_of(transform.transform_image(_columns_image()))[0]) for _ in range(10)]

    first = offsets(3)
    assert first == offsets(3) and len(set(first)) > 1 and all(0 <= x <= 20 for x in first)


def test_random_flip_is_seeded_and_only_when_asked():
    image = Image.fromarray(_noise((8, 8)))
    original = ImageTransform(8, 1).transform_image(image)[0].numpy()
    flipped = np.fliplr(original)

    def flips(transform):
        outputs = [transform.transform_image(image)[0].numpy() for _ in range(20)]
        assert all(np.array_equal(x, original) or np.array_equal(x, flipped) for x in outputs)
        return [np.array_equal(x, flipped) for x in outputs]

    seeded = flips(ImageTransform(8, 1, center_crop=True, random_flip=True, seed=7))
    assert 0 < sum(seeded) < 20
    copy = pickle.loads(pickle.dumps(ImageTransform(8, 1, center_crop=True, random_flip=True, seed=7)))
    assert flips(copy) == seeded
    assert not any(flips(ImageTransform(8, 1, center_crop=True, seed=7)))


def test_image_folder_with_mixed_modes_and_sizes(tmp_path):
    folder = tmp_path / "images"
    _save(folder / "grey.png", _noise((10, 12)))
    _save(folder / "rgb.png", _noise((20, 14, 3), seed=1))
    _save(folder / "rgba.png", _noise((9, 9, 4), seed=2))
    _save(folder / "palette.gif", _noise((9, 9, 3), seed=3), mode="P")
    dataset = load_image_dataset(
        train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"), validation_fraction=0.25
    )
    assert dataset.column_names == ["image"] and len(dataset) == 3
    kwargs = {"train_data_dir": str(folder), "cache_dir": str(tmp_path / "cache"), "validation_fraction": 0.25}
    assert len(load_image_dataset(**kwargs, split="test")) == 1
    assert infer_channels(dataset) == 3
    batch = next(iter(make_dataloader(dataset, resolution=8, batch_size=3)))
    assert set(batch) == {"pixel_values"}
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].abs().max() <= 1


def test_rgba_and_palette_images_become_three_channels():
    rgba = Image.fromarray(_noise((9, 9, 4)))
    palette = Image.fromarray(_noise((9, 9, 3))).convert("P")
    palette.info["transparency"] = 0
    for image in (rgba, palette):
        assert ImageTransform(8, 3).transform_image(image).shape == (3, 8, 8)


def test_image_folder_class_folders_give_labels_and_grey_gives_one_channel(tmp_path):
    for name in ("cat", "dog"):
        for i in range(3):
            _save(tmp_path / name / f"{i}.png", _noise((6, 6), seed=i))
    dataset = load_image_dataset(train_data_dir=str(tmp_path), cache_dir=str(tmp_path / ".cache"))
    assert dataset.column_names == ["image", "label"]
    assert dataset.features["label"].names == ["cat", "dog"]
    assert infer_channels(dataset) == 1
    batch = next(iter(make_dataloader(dataset, resolution=4, batch_size=2)))
    assert batch["pixel_values"].shape == (2, 1, 4, 4) and batch["label"].shape == (2,)


def test_image_folder_with_its_own_test_split(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for i in range(count):
            _save(tmp_path / split / f"{i}.png", _noise((4, 4), seed=i))
    kwargs = {"train_data_dir": str(tmp_path), "cache_dir": str(tmp_path / ".cache")}
    assert len(load_image_dataset(**kwargs)) == 3
    assert len(load_image_dataset(**kwargs, split="test")) == 2
    with pytest.raises(ValueError, match=r"split='validation'.*\['train', 'test'\]"):
        load_image_dataset(**kwargs, split="validation")


def test_bad_sources_fail_early_and_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_data_dir=.*not an existing directory"):
        load_image_dataset(train_data_dir=str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="train_data_dir=.*no image files"):
        load_image_dataset(train_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="pass only one"):
        load_image_dataset(dataset_name="cifar10", train_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"image_column='pixels'.*available columns: \['image', 'label'\]"):
        load_image_dataset(image_column="pixels")
    with pytest.raises(ValueError, match="image_column='label'.*not images"):
        load_image_dataset(image_column="label")
    for fraction in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="validation_fraction"):
            load_image_dataset(validation_fraction=fraction)


def test_image_column_is_detected_and_renamed(tmp_path):
    features = datasets.Features(
        {"name": datasets.Value("string"), "img": datasets.Image(), "target": datasets.ClassLabel(names=["a", "b"])}
    )
    rows = {"name": ["x", "y"], "img": [Image.fromarray(_noise((4, 4)))] * 2, "target": [0, 1]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / "train.parquet")
    dataset = load_image_dataset(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), validation_fraction=0.5)
    assert dataset.column_names == ["image", "label"] and len(dataset) == 1
    assert dataset.features["label"].names == ["a", "b"]


def test_check_images_names_the_corrupt_files(tmp_path):
    folder = tmp_path / "images"
    _save(folder / "a_good.png", _noise((8, 8)))
    (folder / "b_random.png").write_bytes(_noise((300,)).tobytes())
    whole = _png_bytes(_noise((64, 64, 3)))
    (folder / "c_truncated.png").write_bytes(whole[: len(whole) // 2])
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "cache"), split="train"
    )
    with pytest.raises(ValueError, match="2 of 3 images") as info:
        check_images(dataset)
    assert "b_random.png" in str(info.value) and "c_truncated.png" in str(info.value)
    assert "a_good.png" not in str(info.value)


def test_check_images_in_memory_rows_and_max_images(digits_train):
    check_images(digits_train, max_images=100)
    good = _png_bytes(_noise((4, 4)))
    features = datasets.Features({"image": datasets.Image()})
    rows = [{"bytes": good, "path": None}, {"bytes": b"not an image", "path": None}]
    dataset = datasets.Dataset.from_dict({"image": rows}, features=features)
    check_images(dataset, max_images=1)
    with pytest.raises(ValueError, match=r"row 1: \(in-memory image\)"):
        check_images(dataset)


def test_unreachable_hub_dataset_is_a_clear_error_without_waiting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(OSError, match="dataset_name='nonexistent-user/nonexistent-dataset-xyz'") as info:
        load_image_dataset("nonexistent-user/nonexistent-dataset-xyz")
    assert time.perf_counter() - start < 5
    assert "train_data_dir" in str(info.value) and "'digits'" in str(info.value)
    assert info.value.__cause__ is not None


def test_dataloader_is_reproducible(digits_train):
    def first_batch(seed):
        loader = make_dataloader(digits_train, resolution=8, batch_size=16, random_flip=True, seed=seed)
        return next(iter(loader))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["pixel_values"].shape == (16, 1, 8, 8)
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["label"], b["label"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])


def test_dataloader_rejects_a_batch_larger_than_the_data(digits_test):
    with pytest.raises(ValueError, match="batch_size=500"):
        make_dataloader(digits_test, resolution=8, batch_size=500)
    assert len(make_dataloader(digits_test, resolution=8, batch_size=500, drop_last=False)) == 1


def test_dataloader_workers_are_reproducible_and_reshuffle_flips_each_epoch(digits_test):
    def epochs(loader):
        return [torch.cat([batch["pixel_values"] for batch in loader]) for _ in range(2)]

    kwargs = {"resolution": 8, "batch_size": 60, "random_flip": True, "shuffle": False, "num_workers": 2}
    first, second = epochs(make_dataloader(digits_test, **kwargs))
    again, _ = epochs(make_dataloader(digits_test, **kwargs))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, second)  # same images in the same order: only the flips changed


def test_a_deterministic_transform_is_precomputed_with_the_same_batches():
    from hf_ddpm_ncsn.data import PrecomputedImages

    dataset = load_image_dataset()
    on_the_fly = make_dataloader(dataset, resolution=16, channels=1, batch_size=32, seed=3)
    precomputed = make_dataloader(dataset, resolution=16, channels=1, batch_size=32, seed=3, center_crop=True)
    assert isinstance(precomputed.dataset, PrecomputedImages)
    assert not isinstance(on_the_fly.dataset, PrecomputedImages)
    for a, b in zip(on_the_fly, precomputed, strict=True):  # square digits: center and random crops agree
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["label"], b["label"])
    flipped = make_dataloader(dataset, resolution=16, channels=1, batch_size=32, center_crop=True, random_flip=True)
    assert not isinstance(flipped.dataset, PrecomputedImages)
