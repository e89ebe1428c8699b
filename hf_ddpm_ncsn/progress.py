"""Progress bars that stay readable in logs: a terminal gets tqdm's live bar, a log file a line now and then."""

from __future__ import annotations

import sys
from typing import Any

# seconds between two updates when stderr is a file or a pipe (CI, `... 2>&1 | tee log`): a long job then writes a
# few dozen lines instead of thousands of carriage-return redraws
LOG_UPDATE_INTERVAL = 30.0


def tqdm_kwargs(stream: Any = None) -> dict[str, Any]:
    """Keyword arguments for `tqdm` (and diffusers' `set_progress_bar_config`) suited to where the bar is written.

    Args:
        stream (*optional*): the bar's output stream (default: `sys.stderr`, tqdm's).
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return {}
    return {"mininterval": LOG_UPDATE_INTERVAL, "maxinterval": LOG_UPDATE_INTERVAL, "ascii": True}
