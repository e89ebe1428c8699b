"""Sharing trained pipelines on the Hugging Face Hub: model cards rendered from `model_cards/` and folder uploads.

Both pipelines' `push_to_hub` and the training scripts go through `render_model_card` and `push_folder_to_hub`,
so what reaches the Hub (and what is kept out of it: checkpoints, logs, pickle files, tokens) is decided here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .atomic import WORK_IN_PROGRESS_SUFFIXES
from .checkpoints import ABANDONED_DIR
from .folder_checks import PICKLE_SUFFIXES

__all__ = ["HubPushError", "model_card_template", "push_folder_to_hub", "render_model_card"]

logger = logging.getLogger(__name__)

# the templates are package data, so a wheel and a source tree read them from the same place
_TEMPLATE_DIR = Path(__file__).resolve().parent / "model_cards"
_COMMON_TAGS = ["hf-ddpm-ncsn", "diffusers", "unconditional-image-generation"]
_NOT_RECORDED = "not recorded"
_TASK = "unconditional-image-generation"

_SECRET_KEY_PARTS = ("token", "secret", "password", "key")
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{10,}")
_REDACTED = "<redacted>"

# Training outputs that must stay local: resumable accelerate state (abandoned checkpoints included),
# tensorboard/wandb logs, pickle files (they can run code on load) and the hidden staging, backup and deleting
# entries that an interrupted write leaves (`atomic.py`). fnmatch's `*` crosses `/`, so "*/x" catches the entry at
# any depth; a trailing "/" makes huggingface_hub match everything below a folder.
_LOCAL_FOLDERS = ["checkpoint-*", ABANDONED_DIR, "logs", ".ipynb_checkpoints", "__pycache__"]
_LOCAL_ENTRIES = [f".*{suffix}" for suffix in WORK_IN_PROGRESS_SUFFIXES]
_IGNORE_PATTERNS = [
    *(f"{prefix}{name}/" for name in _LOCAL_FOLDERS + _LOCAL_ENTRIES for prefix in ("", "*/")),
    *(f"{prefix}{name}" for name in _LOCAL_ENTRIES for prefix in ("", "*/")),
    *(f"*{suffix}" for suffix in PICKLE_SUFFIXES),
]


class HubPushError(RuntimeError):
    """A push to the Hub failed; the local folder was not touched and can be pushed again.

    Attributes:
        repo_id (`str`): the target repo.
        endpoint (`str`): the Hub endpoint that was contacted.
        folder (`str`): the local folder that was being pushed.
    """

    def __init__(self, message: str, *, repo_id: str, endpoint: str, folder: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.folder = folder


def model_card_template(family: str) -> Path:
    """Path of the Jinja model card template of a model family.

    Args:
        family (`str`): `"ncsn"` or `"ddpm"`.

    Returns:
        `pathlib.Path`: `model_cards/{family}.md` inside the package.
    """
    path = _TEMPLATE_DIR / f"{_family(family).name}.md"
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {path} is missing: the templates live in hf_ddpm_ncsn/model_cards/ (package "
            "data); restore the file or reinstall hf-ddpm-ncsn"
        )
    return path


def _family(name: str):
    """The registered family `name` (see `hf_ddpm_ncsn.families`)."""
    # imported here: the registry imports the pipelines, which import this module
    from .families import get_family

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
    training_rows = [(_table_cell(key), _table_cell(_format(value))) for key, value in _scrub(training or {}).items()]
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
    )


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload pipeline",
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` to it in one commit, leaving training leftovers behind.

    `checkpoint-*/`, `abandoned-checkpoints/` and `logs/` folders, notebook checkpoints, `__pycache__`, pickle
    files (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`) and the hidden leftovers of interrupted writes
    (`.*.partial`, `.*.old`, `.*.deleting`) are never uploaded. The folder itself is only read.

    Args:
        folder (`str` or `os.PathLike`): a saved pipeline folder (with its README.md model card).
        repo_id (`str`): target repo, e.g. `"user/ncsn-digits"`; a bare name goes to the token owner's namespace.
        token (`str`, *optional*): Hub token (default: the logged-in one / `HF_TOKEN`).
        private (`bool`, *optional*): visibility of a newly created repo (default: the Hub's default).
        commit_message (`str`, defaults to `"Upload pipeline"`): commit message.
        revision (`str`, *optional*): existing branch to commit to (default: `main`).
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing to the branch.
        endpoint (`str`, *optional*): Hub endpoint (default: `HF_ENDPOINT` or https://huggingface.co).

    Returns:
        `str`: the URL of the new commit (of the current head when no file changed: no empty commit is made).

    Raises:
        `NotADirectoryError`: `folder` is not a directory (nothing is contacted).
        `HubPushError`: creating the repo or uploading failed; the message never contains the token.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"Cannot push {folder!r} to the Hub: it is not a directory")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_url.repo_id,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=_IGNORE_PATTERNS,
        )
    # Any failure (HTTP status, refused connection, timeout, bad repo id) gets the same advice: nothing local
    # changed, so pushing again is safe. The client's exception stays chained for debugging unless a secret shows
    # up somewhere in its chain, since tracebacks end up in training logs.
    except Exception as err:
        reason = _redact_secrets(f"{type(err).__name__}: {err}", token)
        cause = None if _chain_has_secret(err, token) else err
        raise HubPushError(
            f"Could not push {folder} to the Hub repo {repo_id!r} at {api.endpoint}: {reason}\n"
            f"The local folder {folder} is intact and can be pushed again with push_folder_to_hub once the "
            "problem is fixed.",
            repo_id=repo_id,
            endpoint=api.endpoint,
            folder=folder,
        ) from cause
    where = f"pull request {commit.pr_url}" if commit.pr_url else f"commit {commit.oid}"
    logger.info("Pushed %s to %s (%s)", folder, repo_url, where)
    return commit.commit_url


def _redact_secrets(text: str, token: str | None) -> str:
    """Remove the token in use (passed or stored) and anything shaped like a Hub token from `text`."""
    for secret in {token, get_token()}:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _HF_TOKEN_RE.sub(_REDACTED, text)


def _chain_has_secret(err: BaseException, token: str | None) -> bool:
    """Whether `err` or an exception it was raised from/during mentions a token."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current!r} {current}"
        if _redact_secrets(text, token) != text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_secret_key(key: object) -> bool:
    name = str(key).lower()
    return any(part in name for part in _SECRET_KEY_PARTS)


def _scrub(value: Any) -> Any:
    """Drop secret-named keys and redact token-shaped strings, at any nesting depth."""
    if isinstance(value, Mapping):
        return {key: _scrub(item) for key, item in value.items() if not _is_secret_key(key)}
    if isinstance(value, (list, tuple)):
        return [_scrub(item) for item in value]
    if isinstance(value, str):
        return _HF_TOKEN_RE.sub(_REDACTED, value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    # Paths, enums, dtypes...: their text is what the card shows, so that is what gets checked.
    return _HF_TOKEN_RE.sub(_REDACTED, str(value))


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
