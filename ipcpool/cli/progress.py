"""Progress for long operator commands: a bar on a terminal, the plain lines alone when piped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Steps:
    """Say a line per step and advance; on a terminal the lines scroll above a rich progress bar."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar = bar
        self._task = task

    def say(self, line: str, *, error: bool = False) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, emoji=False, highlight=False,
                                   style="red" if error else None)
        else:
            print(line, file=sys.stderr if error else sys.stdout)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)


@contextmanager
def steps(label: str, total: int) -> Iterator[Steps]:
    """A bar when stdout is a terminal and there is more than a handful to do; quiet otherwise."""
    if total < 10 or not sys.stdout.isatty():
        yield Steps()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        yield Steps(bar, bar.add_task(label, total=total))
