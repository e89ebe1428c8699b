"""Write a folder so that a crash never leaves something that looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block succeeds, publish its content at `target`.

    A new `target` appears in one `os.replace`. An existing one keeps its other entries (a training output folder
    keeps its checkpoints); the staged entries replace their namesakes one by one, with `marker` (e.g.
    `model_index.json`) removed first and written last, so a crash mid-way leaves no marker rather than a mixed
    folder that looks complete. If the block raises, the staging folder is removed and `target` is untouched.

    Args:
        target (`str` or `os.PathLike`): the folder to write.
        marker (`str`, *optional*): the entry whose presence means "complete".
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the published folder gets the usual mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        os.replace(staging, target)
        return
    if marker is not None and (target / marker).exists():
        (target / marker).unlink()
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == marker):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            retired = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".old", dir=target))
            os.replace(destination, retired / entry.name)
            os.replace(entry, destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(entry, destination)
    staging.rmdir()
