"""A per-process report of a training run, for tests of distributed training: off unless asked for.

With the environment variable `HF_DDPM_NCSN_PROCESS_REPORT=1`, every process writes
`<output_dir>/<logging_dir>/process-<index>.json` at the end of training: the world size, the distributed type,
the step, and SHA-256 digests of its first batch and of its final weights. A distributed run must end with the same
weights on every process and have given each one different data; the tests check both from these files.
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
    accelerator: Accelerator, folder: str | os.PathLike, unet, first_batch_digest: str | None, global_step: int
) -> None:
    """Write this process's `process-<index>.json` into `folder`.

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        folder (`str` or `os.PathLike`): the run's logging folder.
        unet: the trained (possibly wrapped) UNet.
        first_batch_digest (`str`, *optional*): `digest` of the first batch this process trained on.
        global_step (`int`): the last step.
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
    (folder / f"process-{accelerator.process_index}.json").write_text(json.dumps(report, indent=2))
