"""Resuming a run: the checkpoint to resume from, the record of the run a checkpoint belongs to, the check that a
new run may continue it, and restoring its state."""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..json_utils import to_json_value
from .arguments import TrainingArguments
from .checkpoints import STATE_FILE, list_checkpoints, read_state, resume_problems

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from ..families import Family

logger = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """A checkpoint to resume from and its state file."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["global_step"]


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> ResumePoint | None:
    """The checkpoint `--resume_from_checkpoint` names: None for a new run (or `latest` without a checkpoint).

    Args:
        resume_from_checkpoint (`str`, *optional*): "latest" or a checkpoint folder.
        output_dir (`str`): where `latest` looks.

    Raises:
        `ValueError`: the named folder is not a complete checkpoint.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return ResumePoint(checkpoints[-1], read_state(checkpoints[-1])) if checkpoints else None
    path = Path(resume_from_checkpoint)
    state = read_state(path)
    if state is None:
        raise ValueError(
            f"--resume_from_checkpoint {path} is not a complete checkpoint (its {STATE_FILE} is missing, or files "
            "it lists are missing or of another size)"
        )
    return ResumePoint(path, state)


def check_resumable(
    resume: ResumePoint,
    record: dict[str, Any],
    sampling_config_keys: tuple[str, ...] = (),
    argument_defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Raise if the run of `record` cannot resume `resume`; return the legitimate changes (to be logged).

    Args:
        resume (`ResumePoint`): the checkpoint.
        record (`dict`): the new run's record (`run_record`).
        sampling_config_keys (`tuple[str, ...]`): scheduler config keys a resumed run may change.
        argument_defaults (`dict`, *optional*): the arguments' defaults (`argument_defaults`), taken for those a
            checkpoint written by an earlier version does not record.

    Raises:
        `ValueError`: the checkpoint belongs to another run; the message lists every mismatch.
    """
    mismatches, changes = resume_problems(resume.state, record, sampling_config_keys, argument_defaults)
    if mismatches:
        raise ValueError(
            f"cannot resume {resume.path}: it belongs to another run.\n  "
            + "\n  ".join(mismatches)
            + "\nResume with the checkpoint's settings, or start a new run in another --output_dir."
        )
    return changes


def public_arguments(args: TrainingArguments, family: Family) -> dict[str, Any]:
    """Arguments worth recording (checkpoints, trackers, model card): everything but the token."""
    values = {**vars(args), **vars(family.args)}
    values.pop("hub_token", None)
    return to_json_value(values)


def argument_defaults(family: Family) -> dict[str, Any]:
    """The default of every argument of the run (common and the family's)."""
    classes = (TrainingArguments, family.arguments_class)
    values = {f.name: f.default for cls in classes for f in fields(cls) if f.default is not MISSING}
    return to_json_value(values)


def run_record(
    args: TrainingArguments, family: Family, num_processes: int, unet=None, scheduler=None
) -> dict[str, Any]:
    """What a checkpoint records about its run (the UNet and scheduler configs once they are built)."""
    record = {"family": family.name, "num_processes": num_processes, "arguments": public_arguments(args, family)}
    if unet is not None:
        record["unet_config"] = dict(unet.config)
    if scheduler is not None:
        record["scheduler_config"] = dict(scheduler.config)
    return record


def apply_learning_rate(optimizer, lr_scheduler, learning_rate: float) -> None:
    """`load_state` restores the checkpoint's base learning rate; a new --learning_rate on resume replaces it (the
    schedule's shape, from --lr_scheduler / --lr_warmup_steps / --max_train_steps, is already the new one)."""
    schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps the torch scheduler
    schedule.base_lrs = [learning_rate] * len(schedule.base_lrs)
    for group, factor in zip(optimizer.param_groups, schedule.lr_lambdas, strict=True):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(schedule.last_epoch)


def restore(
    accelerator: Accelerator,
    resume: ResumePoint | None,
    args: TrainingArguments,
    optimizer,
    lr_scheduler,
    ema: EMAModel | None,
) -> tuple[int, float | None]:
    """Load the resumed checkpoint's state (every process); returns the step and the last loss it recorded."""
    if resume is None:
        if args.resume_from_checkpoint == "latest":
            logger.info("No checkpoint in %s: starting a new run", args.output_dir)
        return 0, None
    accelerator.load_state(str(resume.path))
    if ema is not None:
        ema.to(accelerator.device)  # accelerate restores custom states on the CPU
    if resume.state["arguments"].get("learning_rate") != args.learning_rate:
        apply_learning_rate(optimizer, lr_scheduler, args.learning_rate)
    logger.info("Resumed from %s at step %d", resume.path, resume.step)
    return resume.step, resume.state.get("last_loss")
