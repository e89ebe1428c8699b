"""The accelerate side of a run that several processes share: the Accelerator, and work done by the main process
alone whose failure must stop every process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast_object_list

from .arguments import TRACKERS

if TYPE_CHECKING:
    from .arguments import TrainingArguments


class MainProcessError(RuntimeError):
    """Work that only the main process does failed there; the other processes stop with this error."""


def build_accelerator(args: TrainingArguments) -> Accelerator:
    """The run's Accelerator: on CPU when there is no CUDA (so `accelerate launch --multi_gpu` forms one gloo group
    of processes), with the run's precision, accumulation, tracker and seeded data sampler.

    Args:
        args (`TrainingArguments`): the run's arguments.

    Raises:
        `ValueError`: fp16 asked on a machine without a GPU.
    """
    cpu = not torch.cuda.is_available()
    if cpu and args.mixed_precision == "fp16":
        raise ValueError("--mixed_precision fp16 needs a GPU; on CPU use bf16 or no")
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
    )
    return Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=TRACKERS[args.logger],
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


def on_main_process(accelerator: Accelerator, work: Callable[[], Any]) -> None:
    """Run `work` on the main process only, then tell every process whether it failed: an error there stops every
    process at once, instead of leaving the others waiting at the next barrier. Also a barrier itself.

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        work (`Callable[[], Any]`): what the main process does.

    Raises:
        `MainProcessError`: on the other processes, when `work` failed on the main one (which re-raises its error).
    """
    failure = None
    if accelerator.is_main_process:
        try:
            work()
        except BaseException as err:  # noqa: BLE001 (re-raised below, after the other processes are told)
            failure = err
    if accelerator.num_processes > 1:
        outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        broadcast_object_list(outcome, from_process=0)
        if outcome[0] is not None and failure is None:
            raise MainProcessError(f"the main process failed, so this one stops too: {outcome[0]}")
    if failure is not None:
        raise failure
