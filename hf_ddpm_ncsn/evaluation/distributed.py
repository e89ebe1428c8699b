"""An evaluation shared by the processes of `accelerate launch`: the work is cut into chunks that do not depend on
the number of processes, each chunk draws its noise from its own seed, process r does chunks r, r + N, r + 2N, ...,
and the results are gathered in chunk order. So N processes compute exactly what one process computes, chunk by
chunk: the same inputs to the same batched calls (bit-identical where the arithmetic does not depend on the
process, as on CPU with one thread per process).

A chunk is one batch of `batch_size` images: of samples, or of held-out images for the ELBO, its stratified
estimate and the probability-flow ODE. Chunk k draws from the seed `seed + k * CHUNK_SEED_STRIDE`, so chunk 0 draws
from `seed` itself, as a one-batch evaluation always has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

# seeds below 2^32 (the evaluation's) and chunk indices below 2^32 give distinct generator seeds below 2^64
CHUNK_SEED_STRIDE = 2**32

T = TypeVar("T")


class ProcessFailedError(RuntimeError):
    """Another process of the evaluation failed; this one stops too."""


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation: `rank` of `world_size` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes the files."""
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether this process computes chunk `chunk`."""
        return chunk % self.world_size == self.rank

    def check_chunks(self, what: str, num_items: int, batch_size: int) -> None:
        """Raise a `ValueError` when `num_items` in chunks of `batch_size` leave a process without work.

        Args:
            what (`str`): the items, as the user sets them (e.g. `"--num_samples 100 samples"`).
            num_items (`int`): how many.
            batch_size (`int`): items per chunk.
        """
        chunks = math.ceil(num_items / batch_size)
        if chunks >= self.world_size:
            return
        problem = (
            f"{what} in batches of --batch_size {batch_size} make {chunks} batch(es) for {self.world_size} processes"
        )
        if num_items < self.world_size:
            raise ValueError(f"{problem}: every process needs at least one; use at most {num_items} process(es)")
        largest = (num_items - 1) // (self.world_size - 1)  # the largest batch size with world_size batches
        raise ValueError(
            f"{problem}: every process needs at least one; use --batch_size {largest} or less, or at most "
            f"{chunks} process(es)"
        )


def current_shard() -> Shard:
    """The shard of this process: (0, 1) without `accelerate launch`; with it, the launched group (gloo on CPU when
    there is no CUDA, as the training scripts do)."""
    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(rank=state.process_index, world_size=state.num_processes)


def evaluation_device(device: str | torch.device | None = None) -> torch.device:
    """Where this process's networks run: `device` when given, else accelerate's device for the process (its own GPU
    under `accelerate launch` on GPUs, the GPU when there is one, else the CPU).

    Raises:
        `ValueError`: not a device of torch's, or one this machine does not have.
    """
    if device is None:
        return PartialState(cpu=not torch.cuda.is_available()).device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not one of: cpu, cuda, cuda:<index>, mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if resolved.type == "cuda" and (resolved.index or 0) >= count:
        raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    return resolved


def main_process_first(shard: Shard, work: Callable[[], T]) -> T:
    """work() on the main process, then on the others (e.g. a download, or training a classifier that the others
    then load from its cache). A failure on the main process is raised on every process, instead of leaving the
    others waiting for it at a barrier."""
    if shard.world_size == 1:
        return work()
    result, failure = _attempt(work) if shard.is_main else (None, None)
    _raise_any_failure(shard, [_describe(failure)] if shard.is_main else [None], failure, broadcast=True)
    return result if shard.is_main else work()


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The CPU generator of chunk `chunk` of an evaluation seeded with `seed`."""
    return torch.Generator().manual_seed(seed + chunk * CHUNK_SEED_STRIDE)


def map_chunks(shard: Shard, num_chunks: int, work: Callable[[int], T]) -> list[T]:
    """[work(0), ..., work(num_chunks - 1)] on every process, each process computing its own chunks. A failure in
    any process is raised on every process once all have reached the gather (none is left waiting).

    Args:
        shard (`Shard`): this process's share.
        num_chunks (`int`): how many chunks.
        work (`Callable[[int], T]`): the result of one chunk, picklable (tensors on the CPU).
    """
    mine, failure = _attempt(lambda: {chunk: work(chunk) for chunk in range(num_chunks) if shard.owns(chunk)})
    if shard.world_size > 1:
        parts = gather_object([(mine, _describe(failure))])
        _raise_any_failure(shard, [message for _, message in parts], failure)
        mine = {chunk: value for part, _ in parts for chunk, value in part.items()}
    elif failure is not None:
        raise failure
    return [mine[chunk] for chunk in range(num_chunks)]


def _attempt(work: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return work(), None
    except Exception as err:  # re-raised by _raise_any_failure, after every process has heard of it
        return None, err


def _describe(failure: Exception | None) -> str | None:
    return None if failure is None else f"{type(failure).__name__}: {failure}"


def _raise_any_failure(
    shard: Shard, messages: list[str | None], failure: Exception | None, broadcast: bool = False
) -> None:
    """Raise this process's own error, or a `ProcessFailedError` naming the process that failed (`messages`: one per
    process, None where it succeeded; with `broadcast`, the main process's alone, sent to the others)."""
    if broadcast:
        messages = broadcast_object_list(messages)
    if failure is not None:
        raise failure
    for rank, message in enumerate(messages):
        if message is not None:
            raise ProcessFailedError(f"evaluation process {rank} of {shard.world_size} failed: {message}")
