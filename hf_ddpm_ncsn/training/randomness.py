"""Work beside the training that must not change its noise."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def training_randomness_kept() -> Iterator[None]:
    """Leave the random state of the training (Python's, numpy's, torch's on CPU and CUDA) as it was after the block:
    a preview or an evaluation must not change the noise of the steps after it (building the model copy they sample
    from draws initial weights from torch's global generator)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002 (what set_seed seeds)
    # this process's device only: fork_rng on every visible device would initialise CUDA on each of them
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002
