"""rq as a Redis benchmark peer: ``rq worker-pool -n 2`` on queue ``main``.

The default worker class forks a work horse per job (rq's documented model,
and its isolation); ``SimpleWorker`` runs jobs in the worker itself. The
benchmark runs both (``rq`` and ``rq-simple``). A sender waits for a job's
result with ``Job.latest_result(timeout)``, which blocks on the results stream.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench_common import Recorder

_recorder = Recorder(os.environ.get("BENCH_RECORDS", "."))


def handle(index: int, t_sent: float) -> None:
    _recorder.record(index, t_sent, time.time())


def handle_rtt(index: int, t_sent: float) -> int:
    _recorder.record(index, t_sent, time.time())
    return index


def senders(url: str) -> tuple[Any, Any, tuple[type[Exception], ...]]:
    from redis import Redis
    from rq import Queue

    queue = Queue("main", connection=Redis.from_url(url))

    class NoResult(Exception):
        pass

    def send(index: int, t_sent: float) -> None:
        queue.enqueue(handle, index, t_sent, result_ttl=0)

    def send_wait(index: int, t_sent: float, timeout: float) -> None:
        job = queue.enqueue(handle_rtt, index, t_sent)
        if job.latest_result(timeout=max(1, round(timeout))) is None:
            raise NoResult(f"job {job.id}: no result in {timeout:g} s")

    return send, send_wait, (NoResult,)
