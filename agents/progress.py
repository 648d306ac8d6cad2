"""The one progress bar of the project's long jobs (training, benchmark grids, SB3 ``learn``)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(disable: bool = False, stderr: bool = False) -> Progress:
    """A rich ``Progress``: description, bar, done/total, elapsed, remaining, and each task's ``status``
    field (``bar.add_task(description, total=..., status="")``)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=disable,
                    console=Console(stderr=True) if stderr else None)
