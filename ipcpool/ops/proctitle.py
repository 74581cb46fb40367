"""Process titles, as ``ps`` and ``top`` show them (the one module that imports setproctitle).

Like gunicorn's and Celery's: ``ipcpool: supervisor <root>``, ``ipcpool:
forkserver``, ``ipcpool: worker <slot> idle`` or ``ipcpool: worker <slot>
<type> <id>`` (the id a writer chose, escaped as the CLI shows it). A title is
set only when it changes, and a worker's from its heartbeat thread, once per
heartbeat interval at most: never a call per message.
"""

from __future__ import annotations

import sys

import setproctitle

from ipcpool.ops.terminal import printable


class Title:
    """This process's title; :meth:`set` does nothing when it would not change."""

    def __init__(self) -> None:
        self._current = ""

    def set(self, text: str) -> None:
        if text != self._current:
            self._current = text
            setproctitle.setproctitle(text)


def supervisor(root: object) -> str:
    return f"ipcpool: supervisor {root}"


def worker(slot: int, current: dict[str, object] | None, state: str = "idle") -> str:
    if current:
        return f"ipcpool: worker {slot} {printable(current.get('type'))} {printable(current.get('id'))}"
    return f"ipcpool: worker {slot} {state}"


def name_the_forkserver() -> None:
    """Called at import of ``ipcpool.forkserver_preload``, in multiprocessing's forkserver only."""
    if "multiprocessing.forkserver" in sys.modules and sys.argv[:1] == ["-c"]:
        setproctitle.setproctitle("ipcpool: forkserver")
