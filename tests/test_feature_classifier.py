"""The feature classifier's cache: a crash at any point of a save never leaves an entry that a later run loads
half-written (deterministic fault injection, `fault_injection.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from support.fault_injection import crash_points

import hf_ddpm_ncsn.evaluation.feature_classifier as feature_classifier
from hf_ddpm_ncsn.evaluation.feature_classifier import load_or_train_classifier


def _tiny_labelled_images(split: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    # stands in for the dataset: a few labelled 8x8 images, read without touching the disk
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randint(0, 256, (12, 1, 8, 8), generator=generator, dtype=torch.uint8)
    return images, torch.arange(12) % 3


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_a_crash_while_caching_a_classifier_leaves_no_entry_or_a_complete_one(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_classifier, "load_images", _tiny_labelled_images)
    settings = {"epochs": 1, "batch_size": 4}
    reference = load_or_train_classifier(cache_dir=tmp_path / "reference", **settings)
    complete = _files(tmp_path / "reference")
    assert sorted(Path(name).suffix for name in complete) == [".json", ".safetensors"]
    folder = tmp_path / "cache"

    def save() -> None:
        load_or_train_classifier(cache_dir=folder, **settings)

    for at in crash_points(lambda: shutil.rmtree(folder, ignore_errors=True), save):
        left = _files(folder)
        # whatever the crash left is complete: no partial file, no temporary file under a name a reader uses
        assert all(complete.get(name) == content for name, content in left.items()), (at, sorted(left))
        loaded_from_cache = len(left) == 2
        monkeypatch.setattr(feature_classifier, "train_classifier", _refuse if loaded_from_cache else _train)
        again = load_or_train_classifier(cache_dir=folder, **settings)
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(again.state_dict()[name], value, rtol=0, atol=0)
        assert {k: v for k, v in again.info.items() if k not in ("train_seconds", "cache_file")} == {
            k: v for k, v in reference.info.items() if k not in ("train_seconds", "cache_file")
        }
        assert set(_files(folder)) == set(complete)  # the next run completes the cache


_train = feature_classifier.train_classifier


def _refuse(*args, **kwargs):
    raise AssertionError("a complete cache entry was there: it should have been loaded, not retrained")


@pytest.mark.parametrize("missing", [".json", ".safetensors"])
def test_a_cache_entry_missing_one_of_its_files_is_trained_again(tmp_path, monkeypatch, missing):
    monkeypatch.setattr(feature_classifier, "load_images", _tiny_labelled_images)
    first = load_or_train_classifier(cache_dir=tmp_path, epochs=1, batch_size=4)
    next(path for path in tmp_path.iterdir() if path.suffix == missing).unlink()
    calls = []
    monkeypatch.setattr(feature_classifier, "train_classifier", lambda *a, **k: calls.append(1) or _train(*a, **k))
    again = load_or_train_classifier(cache_dir=tmp_path, epochs=1, batch_size=4)
    assert calls == [1]
    torch.testing.assert_close(again.state_dict(), first.state_dict(), rtol=0, atol=0)
