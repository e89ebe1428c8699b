"""Checks run on a pipeline folder before its weights are loaded: a missing, truncated or pickle-only weights
file, or a model_index.json naming another pipeline, fails here with a message naming the file and the fix,
instead of deep inside diffusers (or, for pickle files, silently running whatever they contain)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PipelineFolderError(ValueError):
    """A pipeline folder that cannot be loaded as it is."""


def pipeline_class_name(folder: str) -> str:
    """The pipeline class named by `folder/model_index.json` (either form of `_class_name`)."""
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {folder} is not a saved diffusers pipeline")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except json.JSONDecodeError as err:
        raise PipelineFolderError(f"{path} is not valid JSON ({err}); re-save or re-download the pipeline") from err
    name = index.get("_class_name")
    return name[1] if isinstance(name, list) else name


def check_safetensors_file(path: str) -> None:
    """Raise if the file's header is unreadable or its tensor data is shorter than the header says."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise PipelineFolderError(f"{path} is truncated ({size} bytes); re-save or re-download the pipeline")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise PipelineFolderError(
                f"{path} is truncated or not a safetensors file (header of {header_len} bytes in a {size}-byte file); "
                "re-save or re-download the pipeline"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PipelineFolderError(f"{path} has a corrupt safetensors header; re-save or re-download it") from err
    data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise PipelineFolderError(
            f"{path} is truncated: its header describes {data_end} bytes of tensors but the file holds "
            f"{size - 8 - header_len}; re-save or re-download the pipeline"
        )


def _model_subfolders(folder: str, index: dict) -> Iterable[str]:
    """Component folders holding a model (a config.json next to weights), as listed in model_index.json."""
    for key, value in index.items():
        sub = os.path.join(folder, key)
        if not key.startswith("_") and isinstance(value, list) and os.path.isfile(os.path.join(sub, "config.json")):
            yield sub


def check_pipeline_folder(folder: str, accepted_class_names: Iterable[str], allow_pickle: bool = False) -> None:
    """Validate a local pipeline folder before loading it.

    Args:
        folder (`str`): the folder holding model_index.json.
        accepted_class_names (`Iterable[str]`): pipeline class names this loader accepts.
        allow_pickle (`bool`, defaults to `False`): accept pickle weights when no safetensors file exists. Pickle
            files can execute arbitrary code when loaded: opt in only for files you trust.
    """
    accepted = tuple(accepted_class_names)
    found = pipeline_class_name(folder)
    if found not in accepted:
        raise PipelineFolderError(
            f"{os.path.join(folder, 'model_index.json')} describes a {found!r} pipeline, not one of {accepted}; "
            f"load it with {found}.from_pretrained or DiffusionPipeline.from_pretrained instead"
        )
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    for sub in _model_subfolders(folder, index):
        files = os.listdir(sub)
        safetensors = [name for name in files if name.endswith(".safetensors")]
        pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
        for name in safetensors:
            check_safetensors_file(os.path.join(sub, name))
        if safetensors:
            continue
        if pickles and not allow_pickle:
            raise PipelineFolderError(
                f"{os.path.join(sub, pickles[0])} is a pickle file, which can run arbitrary code when loaded, and "
                f"{sub} has no safetensors weights. If you trust the file, load with allow_pickle=True and call "
                "save_pretrained() once to convert the folder to safetensors"
            )
        if not pickles:
            raise PipelineFolderError(
                f"{sub} has no weights file (expected diffusion_pytorch_model.safetensors); re-save or re-download "
                "the pipeline"
            )
