"""ipcpool.pool.handle: how a worker's exit reads in the log."""

from __future__ import annotations

import signal

import pytest

from ipcpool.pool.handle import describe_exit


@pytest.mark.parametrize(("code", "words"), [
    (None, "exit status unknown (lost with the forkserver)"),
    (0, "exited with code 0"),
    (3, "exited with code 3"),
    (-signal.SIGKILL, "killed by SIGKILL (perhaps out of memory?)"),
    (-signal.SIGSEGV, "crashed with SIGSEGV (segmentation fault)"),
    (-signal.SIGTERM, "killed by SIGTERM"),
    (255, "exited with code 255 (or its exit status was lost with the forkserver)"),
])
def test_describe_exit(code, words):
    assert describe_exit(code) == words
