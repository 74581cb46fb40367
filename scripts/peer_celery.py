"""Celery as a Redis benchmark peer: Redis broker and result backend, the prefork pool, its defaults.

    celery -A peer_celery worker -P prefork -c 2 -Q main --without-gossip --without-mingle --without-heartbeat

``handle`` records the message (scripts/bench_common.py's Recorder) and stores
no result; ``handle_rtt`` stores one, so a sender can wait for it (the ack
round trip). Nothing else is tuned: Celery acknowledges a task when a worker
*receives* it (``task_acks_late`` is off by default), prefetches 4 per process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench_common import Recorder
from celery import Celery
from celery.signals import worker_ready

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("peer_celery", broker=URL, backend=URL)
app.conf.update(task_default_queue="main", task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True, task_serializer="json", accept_content=["json"])
_recorder = Recorder(os.environ.get("BENCH_RECORDS", "."))


@app.task(name="bench.handle")
def handle(index: int, t_sent: float) -> None:
    _recorder.record(index, t_sent, time.time())


@app.task(name="bench.handle_rtt", ignore_result=False)
def handle_rtt(index: int, t_sent: float) -> int:
    _recorder.record(index, t_sent, time.time())
    return index


@worker_ready.connect
def _ready(**_kwargs: Any) -> None:
    folder = os.environ.get("BENCH_READY")
    if folder:
        (Path(folder) / f"celery-{os.getpid()}").touch()


def senders(url: str) -> tuple[Any, Any, tuple[type[Exception], ...]]:
    """(send, send and wait for its result, the errors a wait that ran out raises)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    def send(index: int, t_sent: float) -> None:
        handle.delay(index, t_sent)

    def send_wait(index: int, t_sent: float, timeout: float) -> None:
        handle_rtt.delay(index, t_sent).get(timeout=timeout)

    return send, send_wait, (CeleryTimeout,)
