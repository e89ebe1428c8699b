"""A per-process report of a training run, for tests of distributed training: off unless asked for.

With the environment variable `HF_DDPM_NCSN_PROCESS_REPORT=1`, every process writes
`<output_dir>/<logging_dir>/process-<index>.json` at the end of training: the world size, the distributed type,
the step, and SHA-256 digests of its first batch, of its final weights and, with an importance sampler of timesteps,
of that sampler's final state. A distributed run must end with the same weights and sampler state on every process
and have given each one different data; the tests check this from these files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .timestep_sampling import LossSecondMomentSampler

PROCESS_REPORT_ENV = "HF_DDPM_NCSN_PROCESS_REPORT"


def process_report_enabled() -> bool:
    """Whether `HF_DDPM_NCSN_PROCESS_REPORT` asks for the report ("1", "true" or "yes")."""
    return os.environ.get(PROCESS_REPORT_ENV, "").strip().lower() in ("1", "true", "yes")


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """The SHA-256 of the tensors' float32 values, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def write_process_report(
    accelerator: Accelerator,
    folder: str | os.PathLike,
    unet,
    first_batch_digest: str | None,
    global_step: int,
    timestep_sampler: LossSecondMomentSampler | None = None,
) -> None:
    """Write this process's `process-<index>.json` into `folder`.

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        folder (`str` or `os.PathLike`): the run's logging folder.
        unet: the trained (possibly wrapped) UNet.
        first_batch_digest (`str`, *optional*): `digest` of the first batch this process trained on.
        global_step (`int`): the last step.
        timestep_sampler (`LossSecondMomentSampler`, *optional*): the run's importance sampler of timesteps.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "global_step": global_step,
        "first_batch_sha256": first_batch_digest,
        "parameters_sha256": digest(accelerator.unwrap_model(unet).parameters()),
    }
    if timestep_sampler is not None:  # the exact float64 bytes: float32 (`digest`) could hide a difference
        report["timestep_sampler_sha256"] = hashlib.sha256(timestep_sampler.flat_state().numpy().tobytes()).hexdigest()
        report["timestep_sampler_warm"] = timestep_sampler.warm
    (folder / f"process-{accelerator.process_index}.json").write_text(json.dumps(report, indent=2))
