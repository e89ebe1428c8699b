"""Training NCSN and DDPM pipelines with accelerate (`scripts/train_ncsn.py`, `scripts/train_ddpm.py`).

Modules, one job each:

- `arguments`: the scripts' arguments (`TrainingArguments`, `NCSNArguments`, `DDPMArguments`) and their parser;
  `config`: the `--config FILE` mapping of argument names to values.
- `processes`: the Accelerator, and main-process work whose failure stops every process.
- `checkpoints`: checkpoint folders on disk (complete or absent, one lineage); `resume`: resuming one of them.
- `build`: setting a run up (data, scheduler, UNet, EMA, optimizer, resumed state).
- `loop`: the optimisation steps, logging, checkpoints and previews at their steps; `train`.
- `timestep_sampling`: importance sampling of DDPM timesteps by the loss's second moment (its state checkpointed).
- `saving`: what a run writes (checkpoints, previews, the final pipeline, the push); `model_card`: its card.
- `process_report`: per-process digests for the distributed tests, with `HF_DDPM_NCSN_PROCESS_REPORT=1` only.
- `cli`: `main`, the scripts' entry point.

The names below are loaded on first use: importing `hf_ddpm_ncsn` reads `checkpoints` (for the Hub's ignore
list) before the pipelines exist, and `families` reads `arguments`; importing the loop here, which needs both,
would close an import cycle.
Patch a name in the module that calls it (e.g. `saving.publish_checkpoint`), not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see (the other names below resolve at run time)
    from .checkpoints import list_checkpoints
    from .cli import main
    from .loop import NonFiniteLossError, TrainingSummary, train
    from .model_card import write_model_card
    from .processes import MainProcessError

# public name -> (module, name there); the second group kept where `hf_ddpm_ncsn/training.py` had them
_EXPORTS = {
    "MainProcessError": ("processes", "MainProcessError"),
    "NonFiniteLossError": ("loop", "NonFiniteLossError"),
    "TrainingSummary": ("loop", "TrainingSummary"),
    "list_checkpoints": ("checkpoints", "list_checkpoints"),
    "main": ("cli", "main"),
    "train": ("loop", "train"),
    "write_model_card": ("model_card", "write_model_card"),
    "MAX_POINTS_FOR_SIGMA_MAX": ("build", "MAX_POINTS_FOR_SIGMA_MAX"),
    "ResumePoint": ("resume", "ResumePoint"),
    "_apply_learning_rate": ("resume", "apply_learning_rate"),
    "build_accelerator": ("processes", "build_accelerator"),
    "check_resumable": ("resume", "check_resumable"),
    "on_main_process": ("processes", "on_main_process"),
    "prepare_output_dir": ("saving", "prepare_output_dir"),
    "public_arguments": ("resume", "public_arguments"),
    "resolve_resume_checkpoint": ("resume", "resolve_resume_checkpoint"),
    "run_record": ("resume", "run_record"),
    "save_checkpoint": ("saving", "save_checkpoint"),
}

__all__ = [
    "MainProcessError",
    "NonFiniteLossError",
    "TrainingSummary",
    "list_checkpoints",
    "main",
    "train",
    "write_model_card",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
