"""Where the evaluation finds its pipeline: an object, a saved folder or a Hub repo id, and where it writes."""

from __future__ import annotations

import os

from diffusers import DiffusionPipeline

from ..families import FAMILIES, family_of_pipeline
from ..pipelines.shareable_pipeline import ShareablePipeline
from ..sharing.folder_checks import pipeline_class_name


def load_pipeline(pipeline_or_path: str | os.PathLike | DiffusionPipeline) -> ShareablePipeline:
    """A pipeline of a registered family (NCSN, DDPM) from an object, a saved folder or a Hub repo id.

    Folders are dispatched on the `_class_name` of their `model_index.json` through the family registry:
    `NCSNPipeline`, or `DDPMPosteriorPipeline` / diffusers' `DDPMPipeline` (loaded as a `DDPMPosteriorPipeline`).

    Args:
        pipeline_or_path (`str`, `os.PathLike` or `DiffusionPipeline`): the pipeline or where it is saved.
    """
    if isinstance(pipeline_or_path, ShareablePipeline):
        return pipeline_or_path
    if isinstance(pipeline_or_path, DiffusionPipeline):
        raise TypeError(
            f"cannot evaluate a {type(pipeline_or_path).__name__}: pass an NCSNPipeline or a DDPMPosteriorPipeline, "
            "or the folder / repo id of a saved one (a diffusers DDPMPipeline folder loads as a DDPMPosteriorPipeline)"
        )
    path = str(pipeline_or_path)
    folder = path if os.path.isdir(path) else _download(path)
    name = pipeline_class_name(folder)
    accepted = [loadable for family in FAMILIES.values() for loadable in family.pipeline_class.loadable_class_names]
    if name not in accepted:
        raise ValueError(f"{path} holds a {name!r} pipeline; the evaluation handles {accepted}")
    return family_of_pipeline(name).pipeline_class.from_pretrained(folder)


def _download(repo_id: str) -> str:
    try:
        return DiffusionPipeline.download(repo_id)
    except OSError as err:
        raise OSError(f"{repo_id!r} is not a local folder, and fetching it as a Hub repo id failed: {err}") from err


def default_output_dir(pipeline_path: str | os.PathLike) -> str:
    """`<folder>/eval` for a local folder, `eval-<name>` (in the working directory) for a Hub repo id.

    Args:
        pipeline_path (`str` or `os.PathLike`): the pipeline folder or Hub repo id that is evaluated.
    """
    path = str(pipeline_path)
    if os.path.isdir(path):
        return os.path.join(path, "eval")
    return f"eval-{path.rstrip('/').split('/')[-1]}"
