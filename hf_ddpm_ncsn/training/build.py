"""Setting a run up: every check that can refuse it, the data, the scheduler, the UNet, EMA, the optimizer and its
schedule, all prepared by accelerate, and the state of a resumed checkpoint."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ..data import check_images, infer_channels, load_image_dataset, make_dataloader
from ..families import unet_config
from .checkpoints import move_aside_other_lineages, new_lineage
from .conditioning import dataset_class_names
from .evaluation import TrainingEvaluator, build_evaluator, check_evaluation_data, read_best
from .processes import on_main_process
from .randomness import training_randomness_kept
from .resume import ResumePoint, argument_defaults, check_resumable, resolve_resume_checkpoint, restore, run_record

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..families import Family
    from .arguments import TrainingArguments
    from .timestep_sampling import LossSecondMomentSampler

logger = logging.getLogger(__name__)

# enough points for sigma_max (NCSNv2 technique 1) without quadratic cost on large datasets
MAX_POINTS_FOR_SIGMA_MAX = 4096


@dataclass
class TrainingRun:
    """Everything the loop works with, prepared by accelerate, and the progress it makes."""

    args: TrainingArguments
    family: Family
    accelerator: Accelerator
    dataloader: Any
    scheduler: Any
    unet: Any
    ema: EMAModel | None
    optimizer: Any
    lr_scheduler: Any
    record: dict[str, Any]  # what the checkpoints record about the run
    lineage: list[list[Any]]
    steps_per_epoch: int
    max_train_steps: int
    global_step: int = 0
    last_loss: float | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # the steps this process ran
    images_seen: int = 0
    first_batch_digest: str | None = None
    timestep_sampler: LossSecondMomentSampler | None = None  # None: the loss draws timesteps uniformly itself
    class_names: list[str] | None = None  # the classes of a --class_conditional run
    evaluator: TrainingEvaluator | None = None  # --eval_steps, on the main process
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every evaluation of the run, resumed ones too
    best: dict[str, Any] | None = None  # the evaluation whose pipeline --keep_best_by keeps
    evaluation_seconds: float = 0.0

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_train_steps / self.steps_per_epoch)


def build_run(args: TrainingArguments, family: Family, accelerator: Accelerator) -> TrainingRun:
    """Set the run up on every process (the output folder is already prepared); resume when asked."""
    # every check that can refuse the run comes before the data is loaded, and runs on every process
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    defaults = argument_defaults(family)
    if resume is not None:
        check_resumable(resume, run_record(args, family, accelerator.num_processes), argument_defaults=defaults)
    base_unet_config = unet_config(args)

    dataset, channels, dataloader = load_data(args)  # a bad path, column or image stops the run here
    check_evaluation_data(args, dataset)
    class_names = dataset_class_names(dataset) if args.class_conditional else None
    if class_names is not None:  # the last embedding is the null class of classifier-free guidance
        base_unet_config = {**base_unet_config, "num_class_embeds": len(class_names) + 1}

    set_seed(args.seed)  # the same initial weights on every process
    scheduler = family.build_scheduler(training_images(family, dataloader))
    unet = family.build_unet(base_unet_config, args.resolution, channels)
    record = run_record(args, family, accelerator.num_processes, unet, scheduler)
    if resume is not None:
        for change in check_resumable(resume, record, family.sampling_config_keys, defaults):
            logger.info("Resuming %s with a changed setting: %s", resume.path.name, change)
    ema = build_ema(args, unet)
    optimizer = build_optimizer(args, unet)
    dataloader = accelerator.prepare(dataloader)
    steps_per_epoch, max_train_steps = count_steps(args, accelerator, len(dataloader), len(dataset), resume)
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
    # after the EMA, so a checkpoint's custom_checkpoint_<i> files keep their order (both are run-defining)
    timestep_sampler = family.timestep_sampler(scheduler)
    if timestep_sampler is not None:
        accelerator.register_for_checkpointing(timestep_sampler)
    set_seed(args.seed, device_specific=True)  # different noise on every process

    global_step, last_loss = restore(accelerator, resume, args, optimizer, lr_scheduler, ema)
    lineage = new_lineage(resume.state if resume is not None else None, global_step)  # used by the main process
    on_main_process(accelerator, lambda: move_aside_other_lineages(args.output_dir, lineage))
    run = TrainingRun(
        args, family, accelerator, dataloader, scheduler, unet, ema, optimizer, lr_scheduler, record, lineage,
        steps_per_epoch, max_train_steps, global_step, last_loss, timestep_sampler=timestep_sampler,
        class_names=class_names,
    )  # fmt: skip
    _start_trackers(run)
    _log_start(run, len(dataset), channels)
    if args.eval_steps:
        _prepare_evaluation(run, resume, channels, dataset)
    return run


def _prepare_evaluation(run: TrainingRun, resume: ResumePoint | None, channels: int, train) -> None:
    """The main process's evaluator (its baseline drawn from `train`, the training split), the evaluations a resumed
    checkpoint recorded, and the best one kept so far."""
    recorded = resume.state.get("evaluations") if resume is not None else None
    run.evaluations = [e for e in recorded if isinstance(e, dict)] if isinstance(recorded, list) else []

    def prepare() -> None:
        with training_randomness_kept():
            run.evaluator = build_evaluator(run.args, run.family, channels, train)
        run.best = read_best(run.args.output_dir, run.args.keep_best_by, run.evaluations)
        logger.info("Evaluating every %d steps: %s", run.args.eval_steps, run.evaluator.cost())

    on_main_process(run.accelerator, prepare)


def load_data(args: TrainingArguments):
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


def training_images(family: Family, dataloader) -> torch.Tensor | None:
    """Up to `MAX_POINTS_FOR_SIGMA_MAX` training images when the family's scheduler is built from the data (NCSN's
    sigma_max="auto"), else None: the images are not read at all."""
    return stack_images(dataloader, MAX_POINTS_FOR_SIGMA_MAX) if family.needs_training_images else None


def stack_images(dataloader, limit: int) -> torch.Tensor:
    """The first `limit` images the dataloader yields, in one tensor."""
    batches, count = [], 0
    for batch in dataloader:
        batches.append(batch["pixel_values"])
        count += len(batches[-1])
        if count >= limit:
            break
    return torch.cat(batches)[:limit]


def build_ema(args: TrainingArguments, unet: UNet2DModel) -> EMAModel | None:
    """The moving average of the weights (None with `--use_ema false`)."""
    if not args.use_ema:
        return None
    return EMAModel(
        unet.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=True,  # one fused update over all parameters: the per-tensor loop cost ~20% of a CPU step
        model_cls=type(unet),
        model_config=unet.config,
    )


def build_optimizer(args: TrainingArguments, unet: UNet2DModel) -> torch.optim.Optimizer:
    """AdamW with the run's hyperparameters."""
    return torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def count_steps(
    args: TrainingArguments, accelerator: Accelerator, batches: int, num_images: int, resume: ResumePoint | None
) -> tuple[int, int]:
    """Optimisation steps per epoch and in all, from the prepared dataloader's `batches` per process.

    Raises:
        `ValueError`: no full batch per process, or a resumed checkpoint already past the run's steps.
    """
    if batches == 0:
        raise ValueError(
            f"--train_batch_size {args.train_batch_size} x {accelerator.num_processes} processes leaves no full batch "
            f"per process from {num_images} images; lower --train_batch_size"
        )
    steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    if resume is not None and resume.step > max_train_steps:
        raise ValueError(
            f"{resume.path} is at step {resume.step}, past the {max_train_steps} steps of this run "
            "(--max_train_steps / --num_epochs): raise --max_train_steps to continue it"
        )
    return steps_per_epoch, max_train_steps


def _start_trackers(run: TrainingRun) -> None:
    if run.args.logger == "none":
        return
    # trackers (tensorboard's hparams) take scalars only
    config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in run.record["arguments"].items()}
    name = f"{run.family.name}-training"
    # wandb's run folder beside tensorboard's, in the output folder, instead of ./wandb
    init_kwargs = {"wandb": {"dir": os.path.join(run.args.output_dir, run.args.logging_dir)}}
    on_main_process(run.accelerator, lambda: run.accelerator.init_trackers(name, config, init_kwargs))


def _log_start(run: TrainingRun, num_images: int, channels: int) -> None:
    accelerator = run.accelerator
    logger.info(
        "Training %s: %d images, %d channels, %d processes (%s), %d steps of %d x %d images",
        run.family.name,
        num_images,
        channels,
        accelerator.num_processes,
        accelerator.distributed_type,
        run.max_train_steps,
        accelerator.num_processes * run.args.gradient_accumulation_steps,
        run.args.train_batch_size,
    )
