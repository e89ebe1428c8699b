"""Checks run on a pipeline folder before its weights are loaded: a missing, truncated or pickle-only weights
file, or a model_index.json naming another pipeline, fails here with a message naming the file and the fix,
instead of deep inside diffusers (or, for pickle files, silently running whatever they contain)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from safetensors import SafetensorError, safe_open

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_WEIGHTS_STEMS = ("diffusion_pytorch_model", "model")


def safetensors_weights_names(files: Iterable[str], variant: str | None = None) -> tuple[str, ...]:
    """The safetensors files diffusers loads for a component with these files: the variant's when the component
    has files of that variant (as diffusers decides), else the plain ones; single or sharded."""
    files = list(files)
    names = [f"{stem}.{suffix}" for stem in _WEIGHTS_STEMS for suffix in ("safetensors", "safetensors.index.json")]
    if variant and any(f".{variant}." in name for name in files):
        # diffusers puts the variant before the last suffix: x.fp16.safetensors, x.safetensors.index.fp16.json
        names = [".".join([*name.split(".")[:-1], variant, name.split(".")[-1]]) for name in names]
    return tuple(names)


#: Largest config file (model_index.json, a component's config) read from a folder: a config is a few kilobytes,
#: trained_betas of 100,000 timesteps about 2 MB.
MAX_CONFIG_BYTES = 16 * 2**20


class PipelineFolderError(ValueError):
    """A pipeline folder that cannot be loaded as it is."""


def read_json_file(path: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """A config file of a folder that may come from anyone: its size is bounded before it is read."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise PipelineFolderError(f"{path} is {size} bytes; a config file may hold at most {max_bytes} bytes")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineFolderError(f"{path} is not valid JSON ({err}); re-save or re-download the pipeline") from err


def pipeline_class_name(folder: str) -> str:
    """The pipeline class named by `folder/model_index.json` (either form of `_class_name`)."""
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {folder} is not a saved diffusers pipeline")
    index = read_json_file(path)
    name = index.get("_class_name") if isinstance(index, dict) else None
    if isinstance(name, list) and len(name) == 2:
        name = name[1]
    if not isinstance(name, str):
        raise PipelineFolderError(f"{path} has no pipeline class name (_class_name); re-save or re-download it")
    return name


def check_safetensors_file(path: str) -> None:
    """Raise unless safetensors itself accepts the file's header: valid JSON of tensor entries whose offsets are
    in order and cover the data exactly (so a truncated or padded file fails). No tensor data is read."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise PipelineFolderError(
            f"{path} is truncated or not a valid safetensors file ({err}); re-save or re-download the pipeline"
        ) from err


def _component_subfolders(folder: str, index: dict) -> Iterable[str]:
    """The component folders listed in model_index.json (entries of the form `"name": [library, class]`)."""
    for key, value in index.items():
        if not key.startswith("_") and isinstance(value, list) and os.path.isdir(os.path.join(folder, key)):
            yield os.path.join(folder, key)


def _model_subfolders(folder: str, index: dict) -> Iterable[str]:
    """Component folders holding a model (a config.json next to weights)."""
    return [sub for sub in _component_subfolders(folder, index) if os.path.isfile(os.path.join(sub, "config.json"))]


def check_pipeline_folder(
    folder: str, accepted_class_names: Iterable[str], allow_pickle: bool = False, variant: str | None = None
) -> None:
    """Validate a local pipeline folder before loading it.

    Args:
        folder (`str`): the folder holding model_index.json.
        accepted_class_names (`Iterable[str]`): pipeline class names this loader accepts.
        allow_pickle (`bool`, defaults to `False`): accept pickle weights when the safetensors file diffusers would
            load is missing. Pickle files can execute arbitrary code when loaded: opt in only for files you trust.
        variant (`str`, *optional*): the weights variant that will be loaded (e.g. `"fp16"`).
    """
    accepted = tuple(accepted_class_names)
    found = pipeline_class_name(folder)
    if found not in accepted:
        raise PipelineFolderError(
            f"{os.path.join(folder, 'model_index.json')} describes a {found!r} pipeline, not one of {accepted}; "
            f"load it with {found}.from_pretrained or DiffusionPipeline.from_pretrained instead"
        )
    index = read_json_file(os.path.join(folder, "model_index.json"))
    for sub in _component_subfolders(folder, index):
        for config in ("config.json", "scheduler_config.json"):
            if os.path.isfile(os.path.join(sub, config)):
                read_json_file(os.path.join(sub, config))
    for sub in _model_subfolders(folder, index):
        files = os.listdir(sub)
        safetensors = [name for name in files if name.endswith(".safetensors")]
        pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
        for name in safetensors:
            check_safetensors_file(os.path.join(sub, name))
        # diffusers falls back to pickle weights whenever the safetensors file it wants is missing
        wanted = safetensors_weights_names(files, variant)
        if pickles and not any(name in files for name in wanted) and not allow_pickle:
            raise PipelineFolderError(
                f"{os.path.join(sub, pickles[0])} is a pickle file, which can run arbitrary code when loaded, and "
                f"{sub} has no {wanted[0]}. If you trust the file, load with allow_pickle=True and call "
                "save_pretrained() once to convert the folder to safetensors"
            )
        if not safetensors and not pickles:
            raise PipelineFolderError(
                f"{sub} has no weights file (expected {wanted[0]}); re-save or re-download the pipeline"
            )
