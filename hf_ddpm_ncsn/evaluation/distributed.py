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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

# seeds below 2^32 (the evaluation's) and chunk indices below 2^32 give distinct generator seeds below 2^64
CHUNK_SEED_STRIDE = 2**32

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation: `rank` of `world_size` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
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


@contextmanager
def main_process_first(shard: Shard) -> Iterator[None]:
    """The block runs on the main process, then on the others (e.g. training a classifier the others then load
    from its cache)."""
    with PartialState().main_process_first() if shard.world_size > 1 else nullcontext():
        yield


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The CPU generator of chunk `chunk` of an evaluation seeded with `seed`."""
    return torch.Generator().manual_seed(seed + chunk * CHUNK_SEED_STRIDE)


def map_chunks(shard: Shard, num_chunks: int, work: Callable[[int], T]) -> list[T]:
    """[work(0), ..., work(num_chunks - 1)] on every process, each process computing its own chunks.

    Args:
        shard (`Shard`): this process's share.
        num_chunks (`int`): how many chunks.
        work (`Callable[[int], T]`): the result of one chunk, picklable (tensors on the CPU).
    """
    mine = {chunk: work(chunk) for chunk in range(num_chunks) if shard.owns(chunk)}
    if shard.world_size > 1:
        merged: dict[int, T] = {}
        for part in gather_object([mine]):
            merged.update(part)
        mine = merged
    return [mine[chunk] for chunk in range(num_chunks)]
