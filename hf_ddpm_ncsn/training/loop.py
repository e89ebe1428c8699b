"""The training loop: one optimisation step after another, with logging, checkpoints and previews at their steps,
then the summary and the final save.

One CPU, several GPUs or several nodes: the same code under `accelerate launch`. On a machine without CUDA the
Accelerator is built with `cpu=True`, so `accelerate launch --multi_gpu --num_processes N` forms one gloo group of
N processes instead of N unrelated runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..progress import tqdm_kwargs
from .build import TrainingRun, build_run
from .checkpoints import list_checkpoints
from .conditioning import conditional_model, drop_labels
from .evaluation import is_better, plot_stratum_terms, save_best
from .process_report import digest, process_report_enabled, write_process_report
from .processes import build_accelerator, on_main_process
from .randomness import training_randomness_kept
from .saving import (
    finish,
    log_image,
    prepare_output_dir,
    preview,
    sampling_pipeline,
    save_checkpoint,
    with_ema_weights,
)
from .timestep_sampling import check_same_state_on_every_process, gather_losses

if TYPE_CHECKING:
    from ..families import Family
    from ..losses import LossTerms
    from .arguments import TrainingArguments

logger = logging.getLogger(__name__)


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
    images_per_second: float | None  # of the optimisation steps: the time of in-training evaluations excluded
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # the steps this process ran
    evaluation_seconds: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # --eval_steps (main process)
    best: dict[str, Any] | None = None  # the evaluation --keep_best_by kept in <output_dir>/best
    pushed_to: str | None = None


def train(args: TrainingArguments, family: Family) -> TrainingSummary:
    """Train `family` on the data of `args`, then save (and push) the EMA pipeline with a model card.

    Args:
        args (`TrainingArguments`): data, optimisation, checkpoints, logging and sharing.
        family (`Family`): what the model is (`families.make_family`).

    Returns:
        `TrainingSummary`: this process's view of the run.
    """
    accelerator = build_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    on_main_process(accelerator, lambda: prepare_output_dir(args.output_dir))  # before anything reads it
    run = build_run(args, family, accelerator)

    progress = tqdm(
        total=run.max_train_steps,
        initial=run.global_step,
        disable=not accelerator.is_local_main_process,
        desc="steps",
        **tqdm_kwargs(),
    )
    start = time.perf_counter()
    _run_epochs(run, progress)
    progress.close()
    wall = time.perf_counter() - start
    accelerator.wait_for_everyone()
    if run.timestep_sampler is not None:
        check_same_state_on_every_process(accelerator, run.timestep_sampler)
    if process_report_enabled():
        folder = Path(args.output_dir) / args.logging_dir
        write_process_report(
            accelerator, folder, run.unet, run.first_batch_digest, run.global_step, run.timestep_sampler
        )
        accelerator.wait_for_everyone()  # every report is written before the main process republishes the folder

    summary = _summary(run, wall)
    if accelerator.is_main_process:
        summary.pushed_to = finish(
            accelerator, args, family, run.unet, run.ema, run.scheduler, summary, run.class_names
        )
    accelerator.end_training()
    if accelerator.num_processes > 1:
        # end_training destroyed the gloo group, so the DDP reducer in `run` holds its last reference: freeing it
        # here would join gloo's worker threads while holding the GIL, and deadlock when a worker is still
        # releasing a finished collective's Python tensors (seen in CI: ~ProcessGroupGloo from the Reducer's
        # dealloc, the worker waiting for the GIL). The run stays alive; the CLI ends such a process with os._exit.
        _FINISHED_RUNS.append(run)
    return summary


#: runs of several processes, kept alive until the process exits (see the end of `train`)
_FINISHED_RUNS: list[TrainingRun] = []


def _run_epochs(run: TrainingRun, progress: tqdm) -> None:
    """Train from the run's step to its last one, skipping the batches a resumed epoch already saw."""
    args, accelerator = run.args, run.accelerator
    first_epoch = run.global_step // run.steps_per_epoch
    skip = (run.global_step % run.steps_per_epoch) * args.gradient_accumulation_steps
    for epoch in range(first_epoch, run.num_epochs):
        if run.global_step >= run.max_train_steps:
            break
        run.dataloader.set_epoch(epoch)
        batches = run.dataloader
        if epoch == first_epoch and skip:
            batches = accelerator.skip_first_batches(run.dataloader, skip)
        run.unet.train()
        for batch in batches:
            losses = _optimisation_step(run, batch["pixel_values"], batch.get("label"))
            if not accelerator.sync_gradients:
                continue  # a batch accumulated into the next step
            _end_step(run, losses, progress)
            if run.global_step >= run.max_train_steps:
                break


def _optimisation_step(run: TrainingRun, x0: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Forward and backward on one batch (with its labels, read by a class-conditional run); the optimizer steps
    once the accumulation is complete.

    Returns:
        `dict`: the batch loss (`"loss"`) and, for a loss of several parts (the hybrid one), each part's batch mean,
        detached.
    """
    accelerator, unet = run.accelerator, run.unet
    if run.first_batch_digest is None and process_report_enabled():
        run.first_batch_digest = digest([x0])
    with accelerator.accumulate(unet):
        terms = _loss_terms(run, x0, _model(run, labels))
        loss = terms.mean()
        accelerator.backward(loss)
        if accelerator.sync_gradients and run.args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(unet.parameters(), run.args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
    run.images_seen += len(x0) * accelerator.num_processes
    if len(terms.parts) < 2:
        return {"loss": loss.detach()}
    return {"loss": loss.detach(), **{f"loss_{name}": part.detach().mean() for name, part in terms.parts.items()}}


def _model(run: TrainingRun, labels: torch.Tensor | None) -> Callable:
    """What the loss calls: the UNet, or for a class-conditional run the UNet given the batch's labels with the
    null class substituted at `--class_dropout_prob`."""
    if run.class_names is None:
        return run.unet
    return conditional_model(run.unet, drop_labels(labels, len(run.class_names), run.args.class_dropout_prob))


def _loss_terms(run: TrainingRun, x0: torch.Tensor, model: Callable) -> LossTerms:
    """The batch's per-sample loss terms: the family's own (uniform timesteps), or, with an importance sampler, the
    terms at the sampler's timesteps weighted by 1 / (T p_t), after every process's unweighted losses have entered
    the sampler's history."""
    sampler = run.timestep_sampler
    if sampler is None:
        return run.family.loss_terms(model, run.scheduler, x0)
    was_warm = sampler.warm
    timesteps, weights = sampler.sample(len(x0), x0.device)
    terms = run.family.loss_terms(model, run.scheduler, x0, timesteps=timesteps)
    sampler.update(*gather_losses(run.accelerator, timesteps, terms.loss))
    if sampler.warm and not was_warm:
        logger.info(
            "Every timestep has %d losses: sampling timesteps by their loss from now on", sampler.history.shape[1]
        )
    return terms.weighted(weights)


def _end_step(run: TrainingRun, losses: dict[str, torch.Tensor], progress: tqdm) -> None:
    """After an optimisation step: the mean loss over processes, EMA, logs, then a checkpoint or preview when due."""
    means = _mean_losses(run, losses)
    mean_loss = means["loss"]
    if run.ema is not None:
        run.ema.step(run.unet.parameters())
    run.global_step += 1
    run.last_loss = mean_loss
    run.loss_history.append((run.global_step, mean_loss))
    _log_step(run, means, progress)
    args, step = run.args, run.global_step
    if args.eval_steps and (step % args.eval_steps == 0 or step == run.max_train_steps):
        _evaluate(run)
    if args.checkpointing_steps and step % args.checkpointing_steps == 0:
        if run.timestep_sampler is not None:  # only the main process's copy is saved: it must be everyone's
            check_same_state_on_every_process(run.accelerator, run.timestep_sampler)
        state = {**run.record, "run_id": run.lineage[-1][0], "lineage": run.lineage, "last_loss": mean_loss}
        state["evaluations"] = run.evaluations
        save_checkpoint(run.accelerator, args.output_dir, step, args.checkpoints_total_limit, state)
    if args.save_images_steps and step % args.save_images_steps == 0:
        preview(run.accelerator, run.family, run.unet, run.ema, run.scheduler, args, step, run.class_names)


def _evaluate(run: TrainingRun) -> None:
    """Measure the EMA weights (main process; the others wait), log the numbers and keep the best pipeline.

    Runs before the step's checkpoint, which then records every evaluation up to its own step for a resumed run.
    """
    accelerator, step, tick = run.accelerator, run.global_step, time.perf_counter()

    def work() -> None:
        model = with_ema_weights(accelerator, run.unet, run.ema)
        pipe = sampling_pipeline(run.family, model, run.scheduler, show_progress=False, class_names=run.class_names)
        result = {"step": step, **run.evaluator.evaluate(pipe)}
        terms = result.pop("elbo_terms", None)
        accelerator.log({f"eval/{name}": value for name, value in result.items() if name != "step"}, step=step)
        if terms is not None:
            path = Path(run.args.output_dir) / "previews" / f"elbo-terms-step-{step}.png"
            path.parent.mkdir(exist_ok=True)
            plot_stratum_terms(terms, path)
            with Image.open(path) as image:
                log_image(accelerator, "elbo_terms", image, step)
        run.evaluations.append(result)
        logger.info("Evaluation at step %d (%.1f s): %s", step, result["seconds"], _brief(result))
        if is_better(run.args.keep_best_by, result, run.best):
            save_best(pipe, run.args.output_dir, result)
            run.best = result

    with training_randomness_kept():  # building the model copy draws initial weights
        on_main_process(accelerator, work)
    run.evaluation_seconds += time.perf_counter() - tick


def _brief(result: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in result.items() if name not in ("step", "seconds"))


def _mean_losses(run: TrainingRun, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's loss (and its parts) averaged over the processes, in one gather.

    Raises:
        `NonFiniteLossError`: the loss is NaN or infinite (nothing is saved from the broken weights).
    """
    gathered = run.accelerator.gather(torch.stack(list(losses.values()))[None]).float().mean(dim=0)
    means = dict(zip(losses, gathered.tolist(), strict=True))
    mean_loss = means["loss"]
    if not math.isfinite(mean_loss):
        checkpoints = list_checkpoints(run.args.output_dir)
        raise NonFiniteLossError(
            f"the loss is {mean_loss} at step {run.global_step + 1}; stopping without saving. The last good "
            f"checkpoint is {checkpoints[-1] if checkpoints else 'none'}: resume from it with a lower "
            "--learning_rate or gradient clipping (--max_grad_norm)"
        )
    return means


def _log_step(run: TrainingRun, means: dict[str, float], progress: tqdm) -> None:
    # no redraw of its own: in a log file the bar is then written at tqdm_kwargs' interval, not every step
    progress.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
    progress.update(1)
    logs = {**means, "lr": run.lr_scheduler.get_last_lr()[0]}
    if run.ema is not None:
        logs["ema_decay"] = run.ema.cur_decay_value
    run.accelerator.log(logs, step=run.global_step)


def _summary(run: TrainingRun, wall: float) -> TrainingSummary:
    training = wall - run.evaluation_seconds
    return TrainingSummary(
        family=run.family.name,
        global_step=run.global_step,
        num_processes=run.accelerator.num_processes,
        final_loss=run.last_loss,
        wall_time_s=wall,
        images_per_second=run.images_seen / training if training > 0 and run.images_seen else None,
        loss_history=run.loss_history,
        evaluation_seconds=run.evaluation_seconds,
        evaluations=run.evaluations,
        best=run.best,
    )
