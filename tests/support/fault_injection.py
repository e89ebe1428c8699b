"""Deterministic fault injection for the crash-safety tests: the Nth filesystem mutation of a block raises, or kills
the process with SIGKILL, before it happens. Run the block once with `at=0` to count its mutations, then once per
N in 1..count: every point where a crash can interrupt the write is visited, with no timing involved."""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import safetensors.torch

import hf_ddpm_ncsn.sharing.atomic as atomic

# every Python-level call through which the writers here change the filesystem (shutil.rmtree's own unlink and
# rmdir calls go through os, so a crash can also land in the middle of a tree removal)
_MUTATIONS = [
    (os, "replace"),
    (os, "rename"),
    (os, "link"),
    (os, "symlink"),
    (os, "unlink"),
    (os, "remove"),
    (os, "rmdir"),
    (os, "mkdir"),
    (os, "chmod"),
    (shutil, "rmtree"),
    (shutil, "copy2"),
    (atomic, "exchange"),
    (safetensors.torch, "save_file"),
]
_WRITE_MODE_CHARACTERS = set("wax+")


class InjectedCrash(BaseException):  # noqa: N818 (a crash, not an error: no `except Exception` may swallow it)
    """Raised instead of the chosen mutation."""


@contextmanager
def fault_at(at: int, kill: bool = False) -> Iterator[dict[str, int]]:
    """Within the block, the `at`-th mutation (1-based; 0: none) raises `InjectedCrash`, or SIGKILLs the process
    when `kill`. Yields a dict whose "count" is the number of mutations seen so far."""
    counter = {"count": 0}

    def hit() -> None:
        counter["count"] += 1
        if counter["count"] == at:
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedCrash(f"injected crash at mutation {at}")

    def wrap(original):
        def wrapper(*args, **kwargs):
            hit()
            return original(*args, **kwargs)

        return wrapper

    def wrap_open(original):
        def wrapper(file, mode="r", *args, **kwargs):
            if _WRITE_MODE_CHARACTERS & set(mode):
                hit()
            return original(file, mode, *args, **kwargs)

        return wrapper

    saved = [(module, name, getattr(module, name)) for module, name in _MUTATIONS]
    saved += [(builtins, "open", builtins.open), (io, "open", io.open)]
    for module, name, original in saved:
        setattr(module, name, wrap_open(original) if name == "open" else wrap(original))
    try:
        yield counter
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def count_mutations(block) -> int:
    """How many mutations `block()` makes."""
    with fault_at(0) as counter:
        block()
    return counter["count"]


def crash_points(setup, block) -> Iterator[int]:
    """For N = 1.. the number of mutations of `block`: run `setup()`, then `block()` crashing (raising) at the
    N-th mutation, then yield N for the caller to check what the crash left."""
    setup()
    total = count_mutations(block)
    assert total > 0, "the block changed nothing on disk"
    for at in range(1, total + 1):
        setup()
        try:
            with fault_at(at):
                block()
        except InjectedCrash:
            pass
        else:
            raise AssertionError(f"mutation {at} of {total} was never reached")
        yield at
