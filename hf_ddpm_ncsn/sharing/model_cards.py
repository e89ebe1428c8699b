"""Model cards: the Hub README.md of a trained pipeline, rendered from its family's Jinja template.

The templates are package data (`hf_ddpm_ncsn/model_cards/<family>.md`); a family's tags and the scheduler keys
its card lists are declared in the family registry (`hf_ddpm_ncsn.families`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .redaction import scrub

# the templates are package data, so a wheel and a source tree read them from the same place
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_cards"
_COMMON_TAGS = ["hf-ddpm-ncsn", "diffusers", "unconditional-image-generation"]
_NOT_RECORDED = "not recorded"
_TASK = "unconditional-image-generation"


def model_card_template(family: str) -> Path:
    """Path of the Jinja model card template of a model family.

    Args:
        family (`str`): `"ncsn"` or `"ddpm"`.

    Returns:
        `pathlib.Path`: `model_cards/{family}.md` inside the package.
    """
    path = TEMPLATE_DIR / f"{_family(family).name}.md"
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {path} is missing: the templates live in hf_ddpm_ncsn/model_cards/ (package "
            "data); restore the file or reinstall hf-ddpm-ncsn"
        )
    return path


def _family(name: str):
    """The registered family `name` (see `hf_ddpm_ncsn.families`)."""
    # imported here: the registry imports the pipelines, which import this module
    from ..families import get_family

    return get_family(name)


def render_model_card(
    family: str,
    *,
    repo_id: str,
    scheduler_config: Mapping[str, Any],
    unet_config: Mapping[str, Any],
    dataset: str | None = None,
    training: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, float] | None = None,
    sample_grid: str | None = None,
    class_names: list[str] | None = None,
) -> ModelCard:
    """Render the model card (README.md) of a trained pipeline from `model_cards/{family}.md`.

    Args:
        family (`str`): `"ncsn"` or `"ddpm"`; picks the template, the pipeline class and the tags.
        repo_id (`str`): the Hub repo the card describes; used in the loading snippets.
        scheduler_config (`Mapping`): the scheduler's config (`pipe.scheduler.config`).
        unet_config (`Mapping`): the UNet's config (`pipe.unet.config`).
        dataset (`str`, *optional*): the training dataset's Hub id; listed in the metadata, and needed for the
            evaluation numbers to go into the metadata's `model-index`.
        training (`Mapping`, *optional*): training arguments and results, shown as a table. Keys naming a token,
            secret, password or key are dropped and values that look like a Hub token are redacted.
        eval_results (`Mapping[str, float]`, *optional*): metric name -> value, shown as a table.
        sample_grid (`str`, *optional*): path (relative to the repo) or URL of an image of samples.
        class_names (`list[str]`, *optional*): the classes 0..K-1 of a class-conditional model (the pipeline's
            `class_names`); the card then says the model is conditional and lists them.

    Returns:
        `huggingface_hub.ModelCard`: the card; `card.save(folder / "README.md")` writes it.
    """
    template = model_card_template(family)
    declared = _family(family)
    model_name = repo_id.rsplit("/", 1)[-1]
    metrics = {name: float(value) for name, value in (eval_results or {}).items()}
    yaml_results = None
    if metrics and dataset:
        yaml_results = [
            EvalResult(
                task_type=_TASK,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=name,
                metric_value=value,
            )
            for name, value in metrics.items()
        ]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=_TASK,
        tags=_COMMON_TAGS + list(declared.card_tags),
        datasets=[dataset] if dataset else None,
        eval_results=yaml_results,
        # huggingface_hub refuses eval results without a model name (it names the `model-index` entry).
        model_name=model_name if yaml_results else None,
    )
    training_rows = [(_table_cell(key), _table_cell(_format(value))) for key, value in scrub(training or {}).items()]
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        model_name=model_name,
        pipeline_class=declared.pipeline_class.__name__,
        scheduler={key: _format(scheduler_config.get(key, _NOT_RECORDED)) for key in declared.card_scheduler_keys},
        unet=_describe_unet(unet_config),
        dataset=dataset,
        training_rows=training_rows,
        eval_rows=[(_table_cell(name), _format(value)) for name, value in metrics.items()],
        sample_grid=sample_grid,
        class_rows=[(index, _table_cell(name)) for index, name in enumerate(class_names or [])],
    )


def _format(value: Any) -> str:
    """Card text of a config or metric value: short floats, on/off for switches, comma-separated sequences."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(item) for item in value)
    return str(value)


def _table_cell(text: str) -> str:
    """Keep a value inside one markdown table cell."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _describe_unet(config: Mapping[str, Any]) -> dict[str, str | None]:
    size = config.get("sample_size")
    if isinstance(size, int):
        resolution = f"{size}×{size}"
    elif isinstance(size, (list, tuple)):
        resolution = "×".join(str(s) for s in size)
    else:
        resolution = _NOT_RECORDED
    channels = config.get("block_out_channels")
    return {
        "class_name": str(config.get("_class_name", "UNet2DModel")),
        "resolution": resolution,
        "in_channels": _format(config.get("in_channels", _NOT_RECORDED)),
        "num_levels": str(len(channels)) if channels else _NOT_RECORDED,
        "block_out_channels": _format(channels) if channels else _NOT_RECORDED,
        "layers_per_block": _format(config.get("layers_per_block", _NOT_RECORDED)),
        "time_embedding_type": config.get("time_embedding_type"),
    }
