"""Crash-safe writes: a new version is built beside the old one and switched in with one rename, so that at every
instant a reader finds the old version or the new one, never a mix and never nothing.

Hidden names mark work in progress, all beside their target in the same folder:
`.<name>.<random>.partial` (a staging folder or file being written), `.<name>.<random>.old` (the previous version,
only on filesystems that cannot exchange two folders atomically) and `.<name>.<random>.deleting` (a folder renamed
aside before it is deleted). `clean_stale` removes them at the next write; nothing else ever deletes a version
before its replacement is in place.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_SUFFIX = ".partial"
BACKUP_SUFFIX = ".old"
DELETING_SUFFIX = ".deleting"
WORK_IN_PROGRESS_SUFFIXES = (STAGING_SUFFIX, BACKUP_SUFFIX, DELETING_SUFFIX)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # Linux renameat2(2) flag; macOS renamex_np(2) calls it RENAME_SWAP, also 2
_UNSUPPORTED = {
    errno.EINVAL,
    errno.ENOSYS,
    errno.EXDEV,
    getattr(errno, "ENOTSUP", -1),
    getattr(errno, "EOPNOTSUPP", -1),
}


def _load_exchange():
    """The C library's atomic exchange of two paths (Linux renameat2, macOS renamex_np), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # Windows: no process-wide C library handle
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        call = libc.renameat2
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: call(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        call = libc.renamex_np
        call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: call(a, b, _RENAME_EXCHANGE)
    return None


_EXCHANGE_CALL = _load_exchange()


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step. Returns False where the OS or filesystem cannot."""
    if _EXCHANGE_CALL is None:
        return False
    if _EXCHANGE_CALL(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def _work_in_progress_of(name: str) -> re.Pattern:
    """The exact shape of the hidden names that a write of the entry `name` leaves: `.<name>.<random><suffix>`,
    where the random part has no dot (so `.pipe.v2.<random>.old` belongs to `pipe.v2`, not to `pipe`)."""
    suffixes = "|".join(re.escape(suffix) for suffix in WORK_IN_PROGRESS_SUFFIXES)
    return re.compile(rf"^\.{re.escape(name)}\.[^.]+(?:{suffixes})$")


def _hidden_sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}")


def publish(staging: str | os.PathLike, target: str | os.PathLike) -> Path | None:
    """Put the folder `staging` at `target` atomically; returns where the previous `target` now is (or None).

    A new `target` appears in one rename. An existing one is swapped with `staging` in one atomic exchange, so
    readers see the old folder or the new one at every instant; the caller then deletes the returned old folder
    (which now carries `staging`'s name). Where the filesystem cannot exchange, the old folder is first renamed to
    `.<name>.<random>.old` and the new one renamed in: a crash between the two leaves no `target` for an instant,
    and `clean_stale` puts the old folder back at the next write.

    Processes whose working directory lies inside `target` keep the old folder; see `atomic_directory`.
    """
    staging, target = Path(staging), Path(target)
    if not os.path.lexists(target):
        os.rename(staging, target)
        return None
    if exchange(staging, target):
        return staging
    backup = _hidden_sibling(target, BACKUP_SUFFIX)
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    return backup


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder by renaming it aside first (`.<name>.<random>.deleting`): a crash mid-way leaves a hidden
    folder that `clean_stale` finishes deleting, never a half-deleted folder under the original name."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if is_work_in_progress(path.name):  # already hidden: the next clean-up finishes an interrupted delete
        _remove(path)
        return
    aside = _hidden_sibling(path, DELETING_SUFFIX)
    os.rename(path, aside)
    _remove(aside)


def clean_stale(target: str | os.PathLike) -> None:
    """Remove what an interrupted write of `target` left beside it. If only a backup of `target` survived (a crash
    between the two renames of `publish`; an empty folder made since counts as none), put it back first."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    shape = _work_in_progress_of(target.name)
    leftovers = [p for p in target.parent.iterdir() if shape.match(p.name)]
    backups = [p for p in leftovers if p.name.endswith(BACKUP_SUFFIX)]
    if backups and (not os.path.lexists(target) or (target.is_dir() and not any(target.iterdir()))):
        newest = max(backups, key=lambda p: p.stat().st_mtime)
        if target.is_dir():
            target.rmdir()
        os.rename(newest, target)
        logger.warning("restored %s from %s, left there by an interrupted write", target, newest.name)
        leftovers.remove(newest)
    for path in leftovers:
        _remove(path)


def is_work_in_progress(name: str) -> bool:
    """Whether an entry name is one of the hidden staging/backup/deleting names of this module."""
    return name.startswith(".") and name.endswith(WORK_IN_PROGRESS_SUFFIXES)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_tree(source: Path, destination: Path) -> None:
    """Recreate `source` at `destination` with hard links to the same files (a copy where linking fails)."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        os.mkdir(destination)
        shutil.copystat(source, destination)
        for child in source.iterdir():
            _link_tree(child, destination / child.name)
    else:
        try:
            os.link(source, destination)
        except OSError:  # a filesystem without hard links, or a mount point inside the folder
            shutil.copy2(source, destination)


def check_replaceable(target: str | os.PathLike) -> None:
    """Raise unless `target` can be replaced as a whole: absent, or a folder that is not a mount point (a mount
    point cannot be renamed; write into a folder inside it)."""
    target = Path(os.path.realpath(target))
    if os.path.lexists(target) and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder; pass a folder to write into")
    if target.is_dir() and os.path.ismount(target):
        raise ValueError(f"{target} is a mount point, which cannot be replaced atomically; use a folder inside it")


def _leftover_of(name: str, entries: set[str]) -> bool:
    """Whether `name` is a hidden leftover of an interrupted write of one of `entries` (e.g. `.unet.<random>.old`)."""
    return any(_work_in_progress_of(entry).match(name) for entry in entries)


def _cwd_inside(folder: Path) -> Path | None:
    """The working directory relative to `folder` when it lies inside it, else None."""
    try:
        return Path(os.getcwd()).relative_to(folder)
    except (FileNotFoundError, ValueError):  # no working directory left, or one elsewhere
        return None


@contextmanager
def atomic_directory(target: str | os.PathLike, keep: bool = True, drop: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block succeeds, publish it at `target` in one step.

    With `keep`, the entries of an existing `target` that the block did not write (a training folder's
    checkpoints, logs, model card, other writers' staging folders) are carried into the new version as hard
    links, so the switch replaces the whole folder at once: a reader, or a crash at any instant, sees either the
    complete old folder or the complete new one. Leftovers of an earlier interrupted write of `target` or of the
    entries the block writes are removed; if the block raises, the staging folder is removed and `target` is
    untouched.

    The old folder is deleted after the switch. A process whose working directory lies inside it is moved to the
    same place in the new folder when it is this one; another process (a shell, a notebook kernel) keeps the old,
    deleted folder and has to `cd` again.

    Args:
        target (`str` or `os.PathLike`): the folder to write (symlinks are resolved: the folder they point to is
            replaced).
        keep (`bool`, defaults to `True`): carry over the entries of the old folder that the block did not write.
        drop (`Iterable[str]`, defaults to `()`): entries of the old folder never carried over, even when the
            block did not write them (what describes the version being replaced).
    """
    target = Path(os.path.realpath(target))
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent))
    try:
        # mkdtemp makes 0700; the published folder keeps the old one's mode, else the usual one
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~_umask()
        os.chmod(staging, mode)
        yield staging
        if keep and target.is_dir():
            written = {entry.name for entry in staging.iterdir()} | set(drop)
            for entry in target.iterdir():
                if entry.name not in written and not _leftover_of(entry.name, written):
                    _link_tree(entry, staging / entry.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    cwd = _cwd_inside(target)
    try:
        old = publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if cwd is not None:
        os.chdir(target / cwd if (target / cwd).is_dir() else target)
    if old is not None:
        _remove(old)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file beside its final name and rename it into place (readers never see a partial file).

    Args:
        path (`str` or `os.PathLike`): the file to write; its folder must exist.
        data (`bytes`): the whole content.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=STAGING_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
