"""The one progress bar of the project's long jobs (training, benchmark grids, SB3 ``learn``).

On a terminal it is a rich live bar. When its stream is not a terminal (output piped, ``nohup``, CI, a
cluster job's log file) a live bar prints nothing until the end, so it prints plain log lines instead:
one when a task starts, one each time a task crosses another tenth of its total, and one at least every
``PLAIN_INTERVAL_S`` seconds in between, e.g.::

    routing/ppo/seed0 12/123 (10%) | return -1.234 loss/step +0.5678 48,000 agent-steps/s | elapsed 0:00:31 left 0:04:39
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL_S = 60.0


def progress_bar(disable: bool = False, stderr: bool = False, plain: bool | None = None,
                 speed_estimate_period: float = 30.0) -> Progress:
    """A rich ``Progress``: description, bar, done/total, elapsed, remaining, and each task's ``status``
    field (``bar.add_task(description, total=..., status="")``).

    :param disable: show nothing.
    :param stderr: draw on stderr instead of stdout.
    :param plain: plain log lines instead of a live bar (``PlainProgress``); None: when the stream is not
        a terminal (rich's test, so ``FORCE_TERMINAL`` and ``TTY_COMPATIBLE`` apply) nor a notebook.
    :param speed_estimate_period: seconds of progress the remaining time is estimated from (rich's; with
        fewer than two updates in it the remaining time is unknown): raise it for tasks whose steps take
        minutes, such as a benchmark's cells.
    """
    console = Console(stderr=True) if stderr else Console()
    if plain is None:
        plain = not console.is_terminal and not console.is_jupyter
    if plain and not disable:
        return PlainProgress(console, speed_estimate_period=speed_estimate_period)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=disable, console=console,
                    speed_estimate_period=speed_estimate_period)


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


class PlainProgress(Progress):
    """A ``Progress`` without a live display that writes plain lines to its console's stream (see the
    module docstring): ``description done/total (percent) | status | elapsed, left``.

    :param interval_s: longest time between two lines of a task that is advancing.
    """

    def __init__(self, console: Console, interval_s: float = PLAIN_INTERVAL_S, speed_estimate_period: float = 30.0
                 ) -> None:
        super().__init__(TextColumn("{task.description}"), console=console, disable=True,
                         speed_estimate_period=speed_estimate_period)
        self.interval_s = interval_s
        self._last: dict[TaskID, tuple[int, float, float | None]] = {}  # tenth, time, completed of the last line

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._emit(task_id)
        return task_id

    def reset(self, task_id: TaskID, **kwargs: Any) -> None:
        super().reset(task_id, **kwargs)
        self._emit(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_emit(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_emit(task_id)

    def _tenth(self, task_id: TaskID) -> int:
        task = self._tasks[task_id]
        if not task.total:
            return -1
        return math.floor(10 * min(task.completed, task.total) / task.total + 1e-9)

    def _maybe_emit(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        tenth, when, completed = self._last[task_id]
        if task.completed == completed:
            return  # a status-only update: printed with the next step
        if task.total is None or self._tenth(task_id) > tenth or time.monotonic() - when >= self.interval_s:
            self._emit(task_id)

    def _emit(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        done = f"{task.completed:,.0f}"
        if task.total:
            done += f"/{task.total:,.0f} ({100 * task.completed / task.total:.0f}%)"
        parts = [f"{task.description} {done}"]
        status = task.fields.get("status")
        if status:
            parts.append(str(status))
        timing = f"elapsed {_clock(task.elapsed or 0.0)}"
        if task.total and 0 < task.completed < task.total:
            timing += f" left {_clock(task.time_remaining)}"
        parts.append(timing)
        stream = self.console.file
        stream.write(" | ".join(parts) + "\n")
        stream.flush()
        self._last[task_id] = (self._tenth(task_id), time.monotonic(), task.completed)
