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
   here, every other call goes to diffusers unchanged.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

PACKAGE = __name__.split(".")[0]
SHIM_MODULE = f"{PACKAGE}_pipeline"
_REGISTRY: dict[str, type] = {}
_WRAPPED_FLAG = "_hf_ddpm_ncsn_wrapped"


def shim_source() -> str:
    """The root shim: one import line, so no model code travels with a saved pipeline."""
    names = ", ".join(sorted(_REGISTRY))
    return f"from {PACKAGE} import {names}  # noqa: F401 (shim: the code lives in the installed package)\n"


def _is_our_shim(custom_pipeline, class_name) -> bool:
    if custom_pipeline is None or class_name not in _REGISTRY:
        return False
    return os.path.basename(str(custom_pipeline)) in (SHIM_MODULE, f"{SHIM_MODULE}.py")


def register(classes: dict[str, type], folder_check: Callable[[str, type], None] | None = None) -> None:
    """Make `classes` loadable by diffusers (idempotent).

    Args:
        classes (`dict[str, type]`): public pipeline and scheduler classes by name.
        folder_check (`Callable`, *optional*): called as `folder_check(folder, pipeline_class)` before a local
            folder carrying our shim is loaded through `DiffusionPipeline.from_pretrained`, so that route refuses
            pickle-only or truncated weights as our own `from_pretrained` does.
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

    original = pipeline_utils._get_pipeline_class
    if getattr(original, _WRAPPED_FLAG, False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _get_pipeline_class(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        custom_pipeline = bound.arguments.get("custom_pipeline")
        class_name = bound.arguments.get("class_name")
        if not _is_our_shim(custom_pipeline, class_name):
            return original(*args, **kwargs)
        ours = _REGISTRY[class_name]
        requested = bound.arguments["class_obj"]
        if isinstance(requested, type) and issubclass(requested, ours):
            return requested  # XPipeline.from_pretrained: that class did its own checks
        if folder_check is not None and os.path.isfile(str(custom_pipeline)):
            folder_check(os.path.dirname(str(custom_pipeline)), ours)
        return ours

    setattr(_get_pipeline_class, _WRAPPED_FLAG, True)
    pipeline_utils._get_pipeline_class = _get_pipeline_class


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
