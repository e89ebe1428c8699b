"""Pushing a saved pipeline folder to the Hugging Face Hub in one commit, leaving training leftovers behind.

Both pipelines' `push_to_hub` and the training scripts go through `push_folder_to_hub`, so what reaches the Hub
(and what is kept out of it: checkpoints, logs, pickle files, tokens) is decided here.
"""

from __future__ import annotations

import logging
import os

from huggingface_hub import HfApi

from ..training.checkpoints import ABANDONED_DIR
from .atomic import WORK_IN_PROGRESS_SUFFIXES
from .folder_checks import PICKLE_SUFFIXES
from .redaction import chain_has_secret, redact_secrets

__all__ = ["HubPushError", "push_folder_to_hub"]

logger = logging.getLogger(__name__)

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
        reason = redact_secrets(f"{type(err).__name__}: {err}", token)
        cause = None if chain_has_secret(err, token) else err
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
