"""The accelerate training loop shared by `scripts/train_ncsn.py` and `scripts/train_ddpm.py`.

One CPU, several GPUs or several nodes: the same code under `accelerate launch`. On a machine without CUDA the
Accelerator is built with `cpu=True`, so `accelerate launch --multi_gpu --num_processes N` forms one gloo group of
N processes instead of N unrelated runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast_object_list, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .atomic import atomic_directory, atomic_write_text, clean_stale
from .checkpoints import (
    CHECKPOINT_PREFIX,
    STATE_FILE,
    list_checkpoints,
    move_aside_other_lineages,
    new_lineage,
    prune,
    publish_checkpoint,
    read_state,
    recover,
    resume_problems,
    staging_path,
    write_state,
)
from .data import check_images, infer_channels, load_image_dataset, make_dataloader
from .families import DDPMFamily, NCSNFamily, make_family, unet_config
from .folder_checks import pipeline_class_name
from .hub import HubPushError, push_folder_to_hub, render_model_card
from .json_utils import dumps, to_json_value
from .training_args import TrainingArguments, parse_training_arguments

logger = logging.getLogger(__name__)

__all__ = [
    "MainProcessError",
    "NonFiniteLossError",
    "TrainingSummary",
    "list_checkpoints",
    "main",
    "train",
    "write_model_card",
]

# enough points for sigma_max (NCSNv2 technique 1) without quadratic cost on large datasets
MAX_POINTS_FOR_SIGMA_MAX = 4096


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops before anything is saved from the broken weights."""


@dataclass
class TrainingSummary:
    """What a finished run reports (also written to `<output_dir>/metrics.json`)."""

    family: str
    global_step: int
    num_processes: int
    final_loss: float | None  # the last step's loss (of the checkpoint when a resumed run had no step left)
    wall_time_s: float
    images_per_second: float | None
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # the steps this process ran
    pushed_to: str | None = None


# ------------------------------------------------------------------------------------------------------------
# Checkpoints (the folder logic lives in checkpoints.py; this is the accelerate side)
@dataclass
class ResumePoint:
    """A checkpoint to resume from and its state file."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["global_step"]


class MainProcessError(RuntimeError):
    """Work that only the main process does failed there; the other processes stop with this error."""


def on_main_process(accelerator: Accelerator, work: Callable[[], Any]) -> None:
    """Run `work` on the main process only, then tell every process whether it failed: an error there stops every
    process at once, instead of leaving the others waiting at the next barrier. Also a barrier itself."""
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


def save_checkpoint(
    accelerator: Accelerator, output_dir: str, global_step: int, limit: int | None, record: dict[str, Any]
) -> Path:
    """`accelerator.save_state` into `.checkpoint-<step>.partial`, the state file (with `record`) written last,
    then one rename to `checkpoint-<step>`; the limit then removes the oldest (each renamed aside first).

    A crash mid-write leaves only the hidden staging folder, which `--resume_from_checkpoint latest` ignores and
    the next run publishes (when complete) or removes: never a `checkpoint-<step>` that looks complete.
    """
    staging = staging_path(output_dir, global_step)

    def prepare() -> None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

    def publish() -> None:
        write_state(staging, {**record, "global_step": global_step})
        publish_checkpoint(staging, output_dir, global_step)
        prune(output_dir, limit)

    on_main_process(accelerator, prepare)
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    on_main_process(accelerator, publish)
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{global_step}"


def prepare_output_dir(output_dir: str) -> None:
    """Create the output folder, after repairing what an interrupted write left: a backup of the folder itself
    (before anything re-creates it empty), then the checkpoints' staging and deleting folders."""
    folder = os.path.realpath(output_dir)  # a symlinked folder's backup lies beside the folder it points to
    clean_stale(folder)
    os.makedirs(folder, exist_ok=True)
    recover(folder)


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> ResumePoint | None:
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
    resume: ResumePoint, record: dict[str, Any], sampling_config_keys: tuple[str, ...] = ()
) -> list[str]:
    """Raise if the run of `record` cannot resume `resume`; return the legitimate changes (to be logged)."""
    mismatches, changes = resume_problems(resume.state, record, sampling_config_keys)
    if mismatches:
        raise ValueError(
            f"cannot resume {resume.path}: it belongs to another run.\n  "
            + "\n  ".join(mismatches)
            + "\nResume with the checkpoint's settings, or start a new run in another --output_dir."
        )
    return changes


def run_record(args: TrainingArguments, family, num_processes: int, unet=None, scheduler=None) -> dict[str, Any]:
    """What a checkpoint records about its run (the UNet and scheduler configs once they are built)."""
    record = {"family": family.name, "num_processes": num_processes, "arguments": public_arguments(args, family)}
    if unet is not None:
        record["unet_config"] = dict(unet.config)
    if scheduler is not None:
        record["scheduler_config"] = dict(scheduler.config)
    return record


def _apply_learning_rate(optimizer, lr_scheduler, learning_rate: float) -> None:
    """`load_state` restores the checkpoint's base learning rate; a new --learning_rate on resume replaces it (the
    schedule's shape, from --lr_scheduler / --lr_warmup_steps / --max_train_steps, is already the new one)."""
    schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps the torch scheduler
    schedule.base_lrs = [learning_rate] * len(schedule.base_lrs)
    for group, factor in zip(optimizer.param_groups, schedule.lr_lambdas, strict=True):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(schedule.last_epoch)


# ------------------------------------------------------------------------------------------------------------
# Helpers
def build_accelerator(args: TrainingArguments) -> Accelerator:
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
        log_with=None if args.logger == "none" else args.logger,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


def public_arguments(args: TrainingArguments, family: NCSNFamily | DDPMFamily) -> dict[str, Any]:
    """Arguments worth recording (trackers, model card): everything but the token."""
    values = {**vars(args), **vars(family.args)}
    values.pop("hub_token", None)
    return to_json_value(values)


def _stack_images(dataloader, limit: int) -> torch.Tensor:
    batches, count = [], 0
    for batch in dataloader:
        batches.append(batch["pixel_values"])
        count += len(batches[-1])
        if count >= limit:
            break
    return torch.cat(batches)[:limit]


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def sample_grid(family, unet: UNet2DModel, scheduler, num_images: int, seed: int):
    """A grid of samples from `unet` (the caller swaps the EMA weights in), on a copy of the scheduler."""
    pipeline = family.pipeline(unet, type(scheduler).from_config(scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.sample_grid(num_images, seed=seed, **family.sample_kwargs())


def _log_image(accelerator: Accelerator, tag: str, image, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")


# ------------------------------------------------------------------------------------------------------------
# The loop
def train(args: TrainingArguments, family: NCSNFamily | DDPMFamily) -> TrainingSummary:
    """Train `family` on the data of `args`, then save (and push) the EMA pipeline with a model card."""
    accelerator = build_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    on_main_process(accelerator, lambda: prepare_output_dir(args.output_dir))  # before anything reads it
    # every check that can refuse the run comes before the data is loaded, and runs on every process
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if resume is not None:
        check_resumable(resume, run_record(args, family, accelerator.num_processes))
    base_unet_config = unet_config(args)

    dataset, channels, dataloader = _load_data(args)  # a bad path, column or image stops the run here

    set_seed(args.seed)  # the same initial weights on every process
    scheduler = family.build_scheduler(_stack_images(dataloader, MAX_POINTS_FOR_SIGMA_MAX))
    unet = family.build_unet(base_unet_config, args.resolution, channels)
    record = run_record(args, family, accelerator.num_processes, unet, scheduler)
    if resume is not None:
        for change in check_resumable(resume, record, family.sampling_config_keys):
            logger.info("Resuming %s with a changed setting: %s", resume.path.name, change)
    ema = _build_ema(args, unet)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataloader = accelerator.prepare(dataloader)
    if len(dataloader) == 0:
        raise ValueError(
            f"--train_batch_size {args.train_batch_size} x {accelerator.num_processes} processes leaves no full batch "
            f"per process from {len(dataset)} images; lower --train_batch_size"
        )
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    if resume is not None and resume.step > max_train_steps:
        raise ValueError(
            f"{resume.path} is at step {resume.step}, past the {max_train_steps} steps of this run "
            "(--max_train_steps / --num_epochs): raise --max_train_steps to continue it"
        )
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    set_seed(args.seed, device_specific=True)  # different noise on every process

    global_step, last_loss = _restore(accelerator, resume, args, optimizer, lr_scheduler, ema)
    lineage = new_lineage(resume.state if resume is not None else None, global_step)  # used by the main process
    on_main_process(accelerator, lambda: move_aside_other_lineages(args.output_dir, lineage))

    if args.logger != "none":
        # trackers (tensorboard's hparams) take scalars only
        config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in record["arguments"].items()}
        on_main_process(accelerator, lambda: accelerator.init_trackers(f"{family.name}-training", config=config))
    logger.info(
        "Training %s: %d images, %d channels, %d processes (%s), %d steps of %d x %d images",
        family.name,
        len(dataset),
        channels,
        accelerator.num_processes,
        accelerator.distributed_type,
        max_train_steps,
        accelerator.num_processes * args.gradient_accumulation_steps,
        args.train_batch_size,
    )

    progress = tqdm(
        total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="steps"
    )
    loss_history: list[tuple[int, float]] = []
    first_batch_digest = None
    start, images_seen = time.perf_counter(), 0
    first_epoch = global_step // steps_per_epoch
    skip = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if epoch == first_epoch and skip else dataloader
        unet.train()
        for batch in batches:
            x0 = batch["pixel_values"]
            if first_batch_digest is None:
                first_batch_digest = _digest([x0])
            with accelerator.accumulate(unet):
                loss = family.loss(unet, scheduler, x0)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            images_seen += len(x0) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            mean_loss = accelerator.gather(loss.detach()[None]).float().mean().item()
            if not math.isfinite(mean_loss):
                checkpoints = list_checkpoints(args.output_dir)
                raise NonFiniteLossError(
                    f"the loss is {mean_loss} at step {global_step + 1}; stopping without saving. The last good "
                    f"checkpoint is {checkpoints[-1] if checkpoints else 'none'}: resume from it with a lower "
                    "--learning_rate or gradient clipping (--max_grad_norm)"
                )
            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            last_loss = mean_loss
            loss_history.append((global_step, mean_loss))
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            accelerator.log(logs, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                state = {**record, "run_id": lineage[-1][0], "lineage": lineage, "last_loss": mean_loss}
                save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit, state)
            if args.save_images_steps and global_step % args.save_images_steps == 0:
                _preview(accelerator, family, unet, ema, scheduler, args, global_step)
            if global_step >= max_train_steps:
                break
    progress.close()
    wall = time.perf_counter() - start
    accelerator.wait_for_everyone()
    _write_process_report(accelerator, args, unet, first_batch_digest, global_step)
    accelerator.wait_for_everyone()  # every report is written before the main process republishes the folder

    summary = TrainingSummary(
        family=family.name,
        global_step=global_step,
        num_processes=accelerator.num_processes,
        final_loss=last_loss,
        wall_time_s=wall,
        images_per_second=images_seen / wall if wall > 0 and images_seen else None,
        loss_history=loss_history,
    )
    if accelerator.is_main_process:
        summary.pushed_to = _finish(accelerator, args, family, unet, ema, scheduler, summary)
    accelerator.end_training()
    return summary


def _load_data(args: TrainingArguments):
    """The training split, its channel count and its dataloader; a bad path, column or image raises here."""
    dataset = load_image_dataset(
        args.dataset_name,
        args.dataset_config_name,
        args.train_data_dir,
        args.image_column,
        split="train",
        cache_dir=args.cache_dir,
    )  # the held-out split does not follow --seed: evaluation must hold out the same images
    check_images(dataset)
    channels = infer_channels(dataset)
    dataloader = make_dataloader(
        dataset,
        resolution=args.resolution,
        channels=channels,
        batch_size=args.train_batch_size,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        num_workers=args.dataloader_num_workers,
        seed=args.seed,
    )
    return dataset, channels, dataloader


def _build_ema(args: TrainingArguments, unet: UNet2DModel) -> EMAModel | None:
    if not args.use_ema:
        return None
    return EMAModel(
        unet.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=True,  # one fused update over all parameters: the per-tensor loop cost ~20% of a CPU step
        model_cls=UNet2DModel,
        model_config=unet.config,
    )


def _restore(
    accelerator, resume: ResumePoint | None, args: TrainingArguments, optimizer, lr_scheduler, ema
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
        _apply_learning_rate(optimizer, lr_scheduler, args.learning_rate)
    logger.info("Resumed from %s at step %d", resume.path, resume.step)
    return resume.step, resume.state.get("last_loss")


def _with_ema_weights(accelerator: Accelerator, unet, ema: EMAModel | None) -> UNet2DModel:
    """An unwrapped copy of the UNet carrying the EMA weights (the training weights are left alone)."""
    model = UNet2DModel.from_config(accelerator.unwrap_model(unet).config)
    model.load_state_dict(accelerator.unwrap_model(unet).state_dict())
    if ema is not None:
        ema.copy_to(model.parameters())
    return model.eval()


def _preview(accelerator, family, unet, ema, scheduler, args: TrainingArguments, step: int) -> None:
    def draw() -> None:
        grid = sample_grid(family, _with_ema_weights(accelerator, unet, ema), scheduler, args.num_preview_images, 0)
        folder = Path(args.output_dir) / "previews"
        folder.mkdir(exist_ok=True)
        grid.save(folder / f"step-{step}.png")
        _log_image(accelerator, "samples", grid, step)

    on_main_process(accelerator, draw)


def _write_process_report(accelerator, args: TrainingArguments, unet, first_batch_digest, global_step) -> None:
    """Each process records what it saw: the world size, its first batch and its final weights (a distributed
    run must end with identical weights on every process and different data on each)."""
    folder = Path(args.output_dir) / args.logging_dir
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "global_step": global_step,
        "first_batch_sha256": first_batch_digest,
        "parameters_sha256": _digest(accelerator.unwrap_model(unet).parameters()),
    }
    (folder / f"process-{accelerator.process_index}.json").write_text(json.dumps(report, indent=2))


def _finish(
    accelerator, args: TrainingArguments, family, unet, ema, scheduler, summary: TrainingSummary
) -> str | None:
    """Publish the EMA pipeline with its samples, metrics, arguments and model card in one switch of the output
    folder (its checkpoints and logs carried over); push when asked. Main process only."""
    model = _with_ema_weights(accelerator, unet, ema)
    pipeline = family.pipeline(model, scheduler)
    grid, grid_error = None, None
    # the previous grid shows the model being replaced: never carried over, even when drawing the new one fails
    with atomic_directory(args.output_dir, drop=("samples.png",)) as staging:
        pipeline.write_pipeline_files(staging)
        metrics = {k: v for k, v in vars(summary).items() if k != "pushed_to"}
        (staging / "metrics.json").write_text(dumps(metrics, indent=2))
        (staging / "training_args.json").write_text(dumps(public_arguments(args, family), indent=2))
        try:
            grid = sample_grid(family, model, scheduler, args.num_preview_images, args.seed)
            grid.save(staging / "samples.png")
        except Exception as err:  # noqa: BLE001 (a failure while sampling the grid must not lose the model)
            grid_error = err
        write_model_card(staging, repo_id=args.hub_model_id or Path(args.output_dir).resolve().name)
    if grid_error is not None:
        raise grid_error
    _log_image(accelerator, "final_samples", grid, summary.global_step)
    logger.info("Saved the %s pipeline to %s", family.name, args.output_dir)
    if not args.push_to_hub:
        return None
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    try:
        return push_folder_to_hub(args.output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo)
    except HubPushError as err:
        logger.error("%s", err)
        raise


def write_model_card(output_dir: str | os.PathLike, repo_id: str | None = None) -> None:
    """(Re)write `<output_dir>/README.md` (atomically) from what a finished run left there: the pipeline's
    configs, training_args.json, metrics.json, samples.png and, when an evaluation has run since, eval/report.json.

    Args:
        output_dir (`str` or `os.PathLike`): the training output folder.
        repo_id (`str`, *optional*): the repo the card names (default: `--hub_model_id`, else the folder name).
    """
    folder = Path(output_dir)

    def read(*parts: str) -> dict:
        path = folder.joinpath(*parts)
        return json.loads(path.read_text()) if path.is_file() else {}

    family = {"NCSNPipeline": "ncsn", "DDPMPosteriorPipeline": "ddpm"}[pipeline_class_name(str(folder))]
    args, metrics = read("training_args.json"), read("metrics.json")
    training = {
        **args,
        **{k: metrics[k] for k in ("global_step", "num_processes", "final_loss", "wall_time_s") if k in metrics},
    }
    dataset = args.get("dataset_name") or (
        Path(args["train_data_dir"]).name if args.get("train_data_dir") else "digits"
    )
    card = render_model_card(
        family,
        repo_id=repo_id or args.get("hub_model_id") or folder.resolve().name,
        scheduler_config=read("scheduler", "scheduler_config.json"),
        unet_config=read("unet", "config.json"),
        dataset=dataset,
        training=training or None,
        eval_results=read("eval", "report.json").get("model_card_metrics"),
        sample_grid="samples.png" if (folder / "samples.png").is_file() else None,
    )
    atomic_write_text(folder / "README.md", str(card))


def main(family_name: str, argv: list[str] | None = None) -> int:
    """Entry point of `scripts/train_<family>.py`: parse, train, report. Returns the exit code."""
    try:
        args, specific = parse_training_arguments(family_name, argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train(args, make_family(family_name, specific))
    except (NonFiniteLossError, HubPushError, MainProcessError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(dumps({"global_step": summary.global_step, "final_loss": summary.final_loss}))
    return 0
