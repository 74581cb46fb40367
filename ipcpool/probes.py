"""The supervisor's HTTP endpoints: /metrics, /healthz, /readyz ([http] listen).

A small threaded HTTP server runs beside the supervisor's loop and never
reads the supervisor's state itself: every request asks the loop (a
:class:`LoopProbe` question, one wake-up byte) and waits up to ``[http]
loop_timeout`` for its answer, built by the loop thread between two steps.
So liveness means what Kubernetes wants it to mean: a loop that does not
answer in time fails ``/healthz``, and ``/metrics`` then serves the last
answer with the lag it has now.

Status codes: 200 when alive / ready, 503 with a one-line JSON reason when
not, 404 elsewhere.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ipcpool.config import HttpConfig, parse_listen
from ipcpool.errors import ConfigError
from ipcpool.tally import Scrape

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    """The loop's answer to one question: what /metrics shows, and whether the pool is ready."""

    scrape: Scrape
    ready: bool
    reason: str


class LoopProbe:
    """Questions from HTTP threads, answered by the loop thread between two steps.

    Every question waiting when the loop answers gets that one answer, so
    concurrent probes never queue behind each other: each waits at most its
    own timeout, however many there are.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._cond = threading.Condition()
        self._asked_at: float | None = None  # the oldest question not answered yet
        self._answers = 0  # answers given so far
        self._answer: Answer | None = None
        self.last: Answer | None = None

    def ask(self, timeout: float) -> tuple[Answer | None, float]:
        """(the loop's answer, or None if it did not come within ``timeout``; seconds waited)."""
        started = time.monotonic()
        with self._cond:
            wanted = self._answers + 1
            if self._asked_at is None:
                self._asked_at = started
        self._wake()
        with self._cond:
            answered = self._cond.wait_for(lambda: self._answers >= wanted, timeout)
            return (self._answer if answered else None), time.monotonic() - started

    def asked(self) -> bool:
        return self._asked_at is not None  # read without the lock: a stale False only delays to the next step

    def answer(self, build: Callable[[float], Answer]) -> None:
        """Loop thread: build one answer (given how long the oldest question waited) for every waiting question."""
        with self._cond:
            asked_at, self._asked_at = self._asked_at, None
        answer = build(time.monotonic() - asked_at if asked_at is not None else 0.0)
        with self._cond:
            self._answer = self.last = answer
            self._answers += 1
            self._cond.notify_all()


class ProbeServer:
    """Binds at start (a taken port stops ``run`` before any worker starts), serves from a daemon thread."""

    def __init__(self, config: HttpConfig, probe: LoopProbe) -> None:
        host, port = parse_listen(config.listen)
        self.loop_timeout = config.loop_timeout
        self.probe = probe
        handler = type("Handler", (_Handler,), {"server_owner": self})
        server = _Server6 if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"[http] listen {config.listen}: cannot listen: {exc.strerror or exc}; "
                              f"choose a free port, or leave [http] listen empty") from exc
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}" if ":" not in host else \
            f"[{host}]:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s", self.address)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the three endpoints (HTTP thread) ------------------------------------------------------

    def metrics(self) -> tuple[int, bytes, str]:
        answer, waited = self.probe.ask(self.loop_timeout)
        if answer is None:
            answer = self.probe.last
            if answer is None:
                return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
            answer = Answer(Scrape(answer.scrape.metrics, answer.scrape.status, waited), answer.ready, answer.reason)
        from ipcpool.metrics import render  # prometheus_client: loaded by the first scrape

        return 200, render(answer.scrape), CONTENT_TYPE_METRICS

    def healthz(self) -> tuple[int, bytes, str]:
        answer, waited = self.probe.ask(self.loop_timeout)
        if answer is None:
            return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
        state = answer.scrape.status.get("state")
        return self._json(200, True, f"the supervisor loop answered in {waited * 1000:.1f} ms (state {state})")

    def readyz(self) -> tuple[int, bytes, str]:
        answer, _waited = self.probe.ask(self.loop_timeout)
        if answer is None:
            return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
        return self._json(200 if answer.ready else 503, answer.ready, answer.reason)

    @staticmethod
    def _json(code: int, ok: bool, reason: str) -> tuple[int, bytes, str]:
        return code, (json.dumps({"ok": ok, "reason": reason}) + "\n").encode(), "application/json"


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_owner: ProbeServer
    routes: dict[str, Callable[[ProbeServer], tuple[int, bytes, str]]] = {
        "/metrics": ProbeServer.metrics, "/healthz": ProbeServer.healthz, "/readyz": ProbeServer.readyz,
    }

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            code, body, kind = 404, b'{"ok": false, "reason": "not found: try /metrics, /healthz or /readyz"}\n', \
                "application/json"
        else:
            try:
                code, body, kind = route(self.server_owner)
            except Exception as exc:  # a probe never takes the server down
                log.exception("HTTP %s failed", self.path)
                code, body, kind = ProbeServer._json(500, False, f"{type(exc).__name__}: {exc}")
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        log.debug("HTTP %s", format % args)
