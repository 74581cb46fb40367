"""dramatiq as a Redis benchmark peer: its Redis broker, ``dramatiq peer_dramatiq -p 2`` (8 threads each).

``handle_rtt`` stores its result (the Results middleware, on the same Redis)
so a sender can block on it: the ack round trip. Acknowledgement is
dramatiq's default: after the actor returns.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from bench_common import Recorder
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)
_recorder = Recorder(os.environ.get("BENCH_RECORDS", "."))


@dramatiq.actor(queue_name="main", max_retries=0)
def handle(index: int, t_sent: float) -> None:
    _recorder.record(index, t_sent, time.time())


@dramatiq.actor(queue_name="main", max_retries=0, store_results=True)
def handle_rtt(index: int, t_sent: float) -> int:
    _recorder.record(index, t_sent, time.time())
    return index


def senders(url: str) -> tuple[Any, Any, tuple[type[Exception], ...]]:
    from dramatiq.results import ResultTimeout

    def send(index: int, t_sent: float) -> None:
        handle.send(index, t_sent)

    def send_wait(index: int, t_sent: float, timeout: float) -> None:
        handle_rtt.send(index, t_sent).get_result(block=True, timeout=int(timeout * 1000))

    return send, send_wait, (ResultTimeout,)
