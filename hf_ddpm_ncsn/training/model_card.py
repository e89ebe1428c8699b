"""The model card of a training output folder, written from what the run (and a later evaluation) left there."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..families import family_of_pipeline
from ..sharing.atomic import atomic_write_text
from ..sharing.folder_checks import pipeline_class_name
from ..sharing.model_cards import render_model_card


def write_model_card(output_dir: str | os.PathLike, repo_id: str | None = None) -> None:
    """(Re)write `<output_dir>/README.md` (atomically) from what a finished run left there: the pipeline's
    configs (model_index.json's class names included), training_args.json, metrics.json, samples.png and, when an
    evaluation has run since, eval/report.json.

    Args:
        output_dir (`str` or `os.PathLike`): the training output folder.
        repo_id (`str`, *optional*): the repo the card names (default: `--hub_model_id`, else the folder name).
    """
    folder = Path(output_dir)

    def read(*parts: str) -> dict:
        path = folder.joinpath(*parts)
        return json.loads(path.read_text()) if path.is_file() else {}

    family = family_of_pipeline(pipeline_class_name(str(folder))).name
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
        class_names=read("model_index.json").get("class_names"),
    )
    atomic_write_text(folder / "README.md", str(card))
