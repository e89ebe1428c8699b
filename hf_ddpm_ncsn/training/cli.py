"""The entry point of `scripts/train_ncsn.py` and `scripts/train_ddpm.py`."""

from __future__ import annotations

import logging
import os
import sys

from ..families import make_family
from ..json_utils import dumps
from ..sharing.hub import HubPushError
from .arguments import parse_training_arguments
from .loop import NonFiniteLossError, train
from .processes import MainProcessError

logger = logging.getLogger(__name__)


def main(family_name: str, argv: list[str] | None = None) -> int:
    """Parse the arguments, train, print the final step and loss as JSON.

    Args:
        family_name (`str`): "ncsn" or "ddpm".
        argv (`list[str]`, *optional*): the arguments (default: `sys.argv[1:]`).

    Returns:
        `int`: the exit code: 0 when trained, 1 when the run failed, 2 for bad arguments.
    """
    try:
        args, specific = parse_training_arguments(family_name, argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train(args, make_family(family_name, specific))
    except (NonFiniteLossError, HubPushError, MainProcessError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(dumps({"global_step": summary.global_step, "final_loss": summary.final_loss}))
    if summary.num_processes > 1:
        _exit_without_teardown()
    return 0


def _exit_without_teardown() -> None:
    """End a process of a multi-process run without freeing its distributed objects (see `loop.train`): every
    file is written and closed by now; the output streams and log handlers are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
