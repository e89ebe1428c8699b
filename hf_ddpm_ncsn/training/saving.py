"""What a run writes: its output folder made ready, accelerate checkpoints, preview grids and, at the end, the EMA
pipeline with its samples, metrics, arguments and model card (pushed to the Hub when asked)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffusers import UNet2DModel

from ..json_utils import dumps
from ..progress import tqdm_kwargs
from ..sharing.atomic import atomic_directory, clean_stale
from ..sharing.hub import HubPushError, push_folder_to_hub
from .checkpoints import CHECKPOINT_PREFIX, prune, publish_checkpoint, recover, staging_path, write_state
from .evaluation import BEST_DIR
from .model_card import write_model_card
from .processes import on_main_process
from .randomness import training_randomness_kept
from .resume import public_arguments

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from ..families import Family
    from ..pipelines.shareable_pipeline import ShareablePipeline
    from .arguments import TrainingArguments
    from .loop import TrainingSummary

logger = logging.getLogger(__name__)


def prepare_output_dir(output_dir: str) -> None:
    """Create the output folder, after repairing what an interrupted write left: a backup of the folder itself
    (before anything re-creates it empty), then the checkpoints' staging and deleting folders and those of
    `best/` (before anything reads it, and before the final switch would carry them into the new folder)."""
    folder = os.path.realpath(output_dir)  # a symlinked folder's backup lies beside the folder it points to
    clean_stale(folder)
    os.makedirs(folder, exist_ok=True)
    recover(folder)
    clean_stale(os.path.join(folder, BEST_DIR))


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


def with_ema_weights(accelerator: Accelerator, unet, ema: EMAModel | None) -> UNet2DModel:
    """An unwrapped copy of the UNet carrying the EMA weights (the training weights are left alone)."""
    trained = accelerator.unwrap_model(unet)
    model = type(trained).from_config(trained.config)
    model.load_state_dict(trained.state_dict())
    if ema is not None:
        ema.copy_to(model.parameters())
    return model.eval()


def sampling_pipeline(
    family: Family, model: UNet2DModel, scheduler, show_progress: bool, class_names: list[str] | None
) -> ShareablePipeline:
    """A pipeline to sample grids from, on a copy of the scheduler (sampling sets its timesteps)."""
    pipeline = family.pipeline(model, type(scheduler).from_config(scheduler.config), class_names)
    pipeline.set_progress_bar_config(**(tqdm_kwargs() if show_progress else {"disable": True}))
    return pipeline


def grid_kwargs(family: Family, class_names: list[str] | None, num_images: int) -> dict[str, Any]:
    """Sampling arguments of a grid: the family's, and for a class-conditional model the classes in turn."""
    kwargs = family.sample_kwargs()
    if class_names is not None:
        kwargs["class_labels"] = [i % len(class_names) for i in range(num_images)]
    return kwargs


def log_image(accelerator: Accelerator, tag: str, image, step: int) -> None:
    """Send a PIL image to the run's trackers (tensorboard, wandb)."""
    pixels = np.asarray(image.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, pixels, step, dataformats="HWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: [pixels]}, step=step)


def preview(
    accelerator: Accelerator,
    family: Family,
    unet,
    ema: EMAModel | None,
    scheduler,
    args: TrainingArguments,
    step: int,
    class_names: list[str] | None = None,
) -> None:
    """Save (and log) a grid of samples from the EMA weights as `previews/step-<step>.png` (main process)."""

    def draw() -> None:
        # no bar of its own: it would break the training bar's line for a few seconds' work
        model = with_ema_weights(accelerator, unet, ema)
        pipeline = sampling_pipeline(family, model, scheduler, show_progress=False, class_names=class_names)
        n = args.num_preview_images
        grid = pipeline.sample_grid(n, seed=0, **grid_kwargs(family, class_names, n))
        folder = Path(args.output_dir) / "previews"
        folder.mkdir(exist_ok=True)
        grid.save(folder / f"step-{step}.png")
        log_image(accelerator, "samples", grid, step)

    with training_randomness_kept():  # the model copy draws initial weights, the sampler its noise
        on_main_process(accelerator, draw)


def finish(
    accelerator: Accelerator,
    args: TrainingArguments,
    family: Family,
    unet,
    ema: EMAModel | None,
    scheduler,
    summary: TrainingSummary,
    class_names: list[str] | None = None,
) -> str | None:
    """Publish the EMA pipeline with its samples, metrics, arguments and model card in one switch of the output
    folder (its checkpoints and logs carried over); push when asked. Main process only.

    Returns:
        `str` or `None`: the URL of the pushed commit, when `--push_to_hub`.
    """
    model = with_ema_weights(accelerator, unet, ema)
    pipeline = family.pipeline(model, scheduler, class_names)
    grid, grid_error = None, None
    # the previous grid shows the model being replaced: never carried over, even when drawing the new one fails
    with atomic_directory(args.output_dir, drop=("samples.png",)) as staging:
        pipeline.write_pipeline_files(staging)
        metrics = {k: v for k, v in vars(summary).items() if k != "pushed_to"}
        (staging / "metrics.json").write_text(dumps(metrics, indent=2))
        (staging / "training_args.json").write_text(dumps(public_arguments(args, family), indent=2))
        try:
            grid_pipeline = sampling_pipeline(family, model, scheduler, show_progress=True, class_names=class_names)
            n = args.num_preview_images
            grid = grid_pipeline.sample_grid(n, seed=args.seed, **grid_kwargs(family, class_names, n))
            grid.save(staging / "samples.png")
        except Exception as err:  # noqa: BLE001 (a failure while sampling the grid must not lose the model)
            grid_error = err
        write_model_card(staging, repo_id=args.hub_model_id or Path(args.output_dir).resolve().name)
    if grid_error is not None:
        raise grid_error
    log_image(accelerator, "final_samples", grid, summary.global_step)
    logger.info("Saved the %s pipeline to %s", family.name, args.output_dir)
    return _push(args) if args.push_to_hub else None


def _push(args: TrainingArguments) -> str:
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    try:
        return push_folder_to_hub(args.output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo)
    except HubPushError as err:
        logger.error("%s", err)
        raise
