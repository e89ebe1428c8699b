"""The one place where hf_ddpm_ncsn teaches diffusers' loader about itself (diffusers 0.42).

A saved pipeline folder (or Hub repo) carries `model_index.json` with `"_class_name": ["hf_ddpm_ncsn_pipeline",
"<Pipeline>"]`, components recorded as `["diffusers", "<Class>"]`, and a one-line root shim
`hf_ddpm_ncsn_pipeline.py` that re-exports the classes from the installed package. That layout loads by every route:

- without importing this package, `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` runs the shim,
  which imports the package, which registers the classes below before diffusers resolves the components;
- after `import hf_ddpm_ncsn`, the wrapped `_get_pipeline_class` recognises the shim and returns the installed
  class without running the file, so neither a folder nor a Hub repo id asks for `trust_remote_code`.

What is touched in diffusers, and nothing else:
1. one attribute per public class on the `diffusers` module (`diffusers.NCSNPipeline`, ...), which is where its
   loader looks up `["diffusers", name]` components and plain `_class_name` strings; an existing diffusers class
   of the same name is never replaced;
2. `diffusers.pipelines.pipeline_utils._get_pipeline_class`, wrapped: only calls naming our shim are answered
   here, every other call goes to diffusers unchanged;
3. `diffusers.pipelines.pipeline_utils.load_sub_model`, wrapped: before a component of one of our pipeline classes
   is loaded, the folder it is loaded from (the local folder or the Hub snapshot, whatever the form of
   `_class_name`) goes through the folder checks. That is the one place every `DiffusionPipeline.from_pretrained`
   route passes through with the folder actually loaded, before any weight is read; our own `from_pretrained`
   checks first (honouring `allow_pickle`) and marks the folder as checked.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

logger = logging.getLogger(__name__)

PACKAGE = __name__.split(".")[0]
SHIM_MODULE = f"{PACKAGE}_pipeline"
_REGISTRY: dict[str, type] = {}
_WRAPPED_FLAG = "_hf_ddpm_ncsn_wrapped"
# folders whose checks our own from_pretrained has just run (with its allow_pickle): not checked a second time
_CHECKED_FOLDERS: ContextVar[frozenset[str]] = ContextVar("hf_ddpm_ncsn_checked_folders", default=frozenset())


@contextmanager
def folder_already_checked(folder: str | os.PathLike) -> Iterator[None]:
    """Within the block, loading components from `folder` skips the folder checks (the caller ran them)."""
    token = _CHECKED_FOLDERS.set(_CHECKED_FOLDERS.get() | {os.path.realpath(folder)})
    try:
        yield
    finally:
        _CHECKED_FOLDERS.reset(token)


def shim_source() -> str:
    """The root shim: one import line, so no model code travels with a saved pipeline."""
    names = ", ".join(sorted(_REGISTRY))
    return f"from {PACKAGE} import {names}  # noqa: F401 (shim: the code lives in the installed package)\n"


def _is_our_shim(custom_pipeline, class_name) -> bool:
    if custom_pipeline is None or class_name not in _REGISTRY:
        return False
    return os.path.basename(str(custom_pipeline)) in (SHIM_MODULE, f"{SHIM_MODULE}.py")


def register(classes: dict[str, type], folder_check: Callable[[str, type], None]) -> None:
    """Make `classes` loadable by diffusers (idempotent).

    Args:
        classes (`dict[str, type]`): public pipeline and scheduler classes by name.
        folder_check (`Callable`): called as `folder_check(folder, pipeline_class, variant)` before a component of
            one of our pipelines is loaded through `DiffusionPipeline.from_pretrained`, so that route refuses pickle
            or truncated weights as our own `from_pretrained` does.
    """
    import diffusers
    from diffusers.pipelines import pipeline_utils

    for name, cls in classes.items():
        _REGISTRY[name] = cls
        existing = getattr(diffusers, name, None)
        if existing is None or existing is cls:
            setattr(diffusers, name, cls)
        else:
            logger.warning("diffusers already defines %s; hf_ddpm_ncsn does not replace it", name)
    _wrap(pipeline_utils, "_get_pipeline_class", _answer_our_shim)
    _wrap(pipeline_utils, "load_sub_model", functools.partial(_check_before_loading, folder_check=folder_check))


def _wrap(module, name: str, handler: Callable) -> None:
    """Replace `module.name` by `handler(original, bound_arguments)`, once."""
    original = getattr(module, name)
    if getattr(original, _WRAPPED_FLAG, False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return handler(original, signature.bind(*args, **kwargs))

    setattr(wrapper, _WRAPPED_FLAG, True)
    setattr(module, name, wrapper)


def _answer_our_shim(original: Callable, bound: inspect.BoundArguments):
    """`_get_pipeline_class`: return the installed class for our shim instead of running the file."""
    custom_pipeline, class_name = bound.arguments.get("custom_pipeline"), bound.arguments.get("class_name")
    if not _is_our_shim(custom_pipeline, class_name):
        return original(*bound.args, **bound.kwargs)
    requested = bound.arguments["class_obj"]
    ours = _REGISTRY[class_name]
    return requested if isinstance(requested, type) and issubclass(requested, ours) else ours


def _check_before_loading(original: Callable, bound: inspect.BoundArguments, folder_check: Callable):
    """`load_sub_model`: check the folder a component of one of our pipelines is about to be loaded from, and load
    safetensors only (diffusers would fall back to a pickle file where the safetensors file is missing)."""
    pipeline_class, folder = bound.arguments.get("pipeline_class"), bound.arguments.get("cached_folder")
    ours = tuple(cls for cls in _REGISTRY.values() if hasattr(cls, "loadable_class_names"))
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, ours)):
        return original(*bound.args, **bound.kwargs)
    if folder is None:  # fail closed: a diffusers release that stops naming the folder must not skip the checks
        raise RuntimeError("hf_ddpm_ncsn cannot check this folder: diffusers did not say where it loads it from")
    if os.path.realpath(folder) not in _CHECKED_FOLDERS.get():
        folder_check(str(folder), pipeline_class, bound.arguments.get("variant"))
        bound.arguments["use_safetensors"] = True
    return original(*bound.args, **bound.kwargs)


def finalize_saved_folder(folder: str | os.PathLike, pipeline_cls: type) -> None:
    """Rewrite a freshly saved model_index.json into the loadable layout and write the root shim.

    diffusers records our components by module path (`["hf_ddpm_ncsn.schedulers....", "NCSNScheduler"]`), which a
    Hub download cannot resolve; they become `["diffusers", name]`, served by the registered attributes.
    """
    path = os.path.join(folder, "model_index.json")
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    index.pop("_name_or_path", None)
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, class_name = value
        if isinstance(library, str) and (library == PACKAGE or library.startswith(f"{PACKAGE}.")):
            if class_name not in _REGISTRY:
                raise ValueError(f"component {key!r} ({library}.{class_name}) is not a registered hf_ddpm_ncsn class")
            index[key] = ["diffusers", class_name]
    index["_class_name"] = [SHIM_MODULE, pipeline_cls.__name__]
    with open(os.path.join(folder, f"{SHIM_MODULE}.py"), "w", encoding="utf-8") as f:
        f.write(shim_source())
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
