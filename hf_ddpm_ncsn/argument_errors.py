"""Error messages shared by the scripts' argument parsers (training and evaluation)."""

from __future__ import annotations

import argparse
import difflib


def describe_unknown_flags(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """Name the unrecognised flags, with the closest known ones, and never their values (one may be a token)."""
    known = [option for action in parser._actions for option in action.option_strings]
    flags = [item.split("=", 1)[0] for item in unknown if item.startswith("-")]
    described = []
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1)
        described.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    has_values = len(unknown) > len(flags) or any("=" in item for item in unknown)
    hidden = "; their values are not shown" if has_values else ""
    return f"unrecognised arguments: {', '.join(described) or 'none named'}{hidden}; see --help"
