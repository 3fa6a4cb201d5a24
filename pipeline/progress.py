"""Rich progress bars and console output for the long steps (library code never prints)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich Progress on stderr; quiet when stderr is not a terminal and FDKD_QUIET is set."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=not sys.stderr.isatty() and _quiet(), transient=False) as p:
        yield p


def _quiet() -> bool:
    import os

    return os.environ.get("FDKD_QUIET", "") not in ("", "0")
