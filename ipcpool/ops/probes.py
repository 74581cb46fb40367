"""The supervisor's HTTP endpoints: /metrics, /healthz, /readyz ([http] listen).

A small HTTP server runs in one thread beside the supervisor's loop and never
reads the supervisor's state itself: every request asks the loop (a
:class:`LoopProbe` question, one wake-up byte) and is answered once the loop
has built its answer between two steps, or when ``[http] loop_timeout`` has
passed without one. So liveness means what Kubernetes wants it to mean: a loop
that does not answer in time fails ``/healthz``, and ``/metrics`` then serves
the last answer with the lag it has now.

The port may face a hostile network (the deploy examples bind 0.0.0.0), so
what a client can take is bounded, and it never takes what the loop needs:

- one thread serves every connection (non-blocking sockets, one selector): a
  client that never finishes its request costs a descriptor, never a thread;
- at most ``MAX_CONNECTIONS`` connections are open; a new one past that, or
  past the descriptors the server may take, drops the oldest still sending its
  request (so a fresh probe always gets in), and with none to drop the
  listener stops accepting until there is room;
- a client has ``REQUEST_TIMEOUT`` seconds to send its whole request head, and
  as long again to take the answer (a deadline, not a per-read timeout, so a
  byte now and then does not keep a connection);
- the server never takes the last ``FD_RESERVE`` descriptors under
  ``RLIMIT_NOFILE``: the loop keeps them to spawn workers and open files. It
  counts the process's open descriptors (:func:`open_fds`) before it accepts,
  and drops waiting clients if the loop's own use grows into the reserve.

Status codes: 200 when alive / ready, 503 with a one-line JSON reason when
not, 404 elsewhere, 405 for a method other than GET or HEAD, 400 for a request
line that is not one, 431 for a request head over ``MAX_REQUEST_HEAD`` bytes.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from ipcpool.config import HttpConfig, parse_listen
from ipcpool.errors import ConfigError
from ipcpool.ops.tally import Scrape

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request head, and again to take the answer
MAX_CONNECTIONS = 256  # client connections open at once, whatever RLIMIT_NOFILE allows
FD_RESERVE = 64  # descriptors under RLIMIT_NOFILE the server never takes: the loop's, to spawn workers, open files
MAX_REQUEST_HEAD = 8192  # bytes of request line and headers
ACCEPT_BATCH = 16  # connections accepted in one turn, so the requests already in are read between bursts
LISTEN_BACKLOG = 128
RECHECK = 0.25  # seconds between looks at the descriptors in use while the listener waits for room
FD_DIRS = ("/proc/self/fd", "/dev/fd")  # one entry per open descriptor: Linux, then macOS and the BSDs


def open_fds(dirs: Sequence[str] = FD_DIRS) -> int | None:
    """How many descriptors this process has open, from the first of ``dirs`` that lists them; None
    when none does. Raises OSError when the listing cannot be opened (EMFILE: none left)."""
    for path in dirs:
        try:
            return len(os.listdir(path)) - 1  # less the listing's own descriptor
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


@dataclass(frozen=True)
class Answer:
    """The loop's answer to one question: what /metrics shows, with the verdict /readyz reads."""

    scrape: Scrape


class LoopProbe:
    """Questions from the HTTP thread, answered by the loop thread between two steps.

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
        self.on_answer: Callable[[], None] | None = None  # told (from the loop thread) after each answer

    def question(self) -> int:
        """Ask without waiting (the loop is woken): the ticket :meth:`answered` takes."""
        with self._cond:
            if self._asked_at is None:
                self._asked_at = time.monotonic()
            ticket = self._answers + 1
        self._wake()
        return ticket

    def answered(self, ticket: int) -> Answer | None:
        """The answer to the question of ``ticket``, once the loop has given it (a later one may do)."""
        with self._cond:
            return self._answer if self._answers >= ticket else None

    def ask(self, timeout: float) -> tuple[Answer | None, float]:
        """(the loop's answer, or None if it did not come within ``timeout``; seconds waited)."""
        started = time.monotonic()
        wanted = self.question()
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
        if self.on_answer is not None:
            self.on_answer()


Route = Callable[["ProbeServer", "Answer | None", float], tuple[int, bytes, str]]


class _Connection:
    """One client: its socket, its deadline, what it has sent, and what it is waiting for or being sent."""

    __slots__ = ("asked", "deadline", "events", "fd", "head", "head_only", "out", "route", "sock", "ticket")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.head = b""
        self.events = 0  # what the selector watches it for (0: not registered)
        self.route: Route | None = None
        self.head_only = False
        self.ticket = 0
        self.asked = 0.0
        self.out = b""


_LISTENER = "listener"
_WAKE = "wake"


class ProbeServer:
    """Binds at start (a taken port stops ``run`` before any worker starts), serves from one daemon thread."""

    def __init__(self, config: HttpConfig, probe: LoopProbe) -> None:
        host, port = parse_listen(config.listen)
        self.loop_timeout = config.loop_timeout
        self.probe = probe
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
        except OSError as exc:
            listener.close()
            raise ConfigError(f"[http] listen {config.listen}: cannot listen: {exc.strerror or exc}; "
                              f"choose a free port, or leave [http] listen empty") from exc
        listener.setblocking(False)
        self._listener = listener
        bound = listener.getsockname()[1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self._accepting = True
        self._connections: dict[int, _Connection] = {}  # every open one, by descriptor
        self._reading: OrderedDict[int, _Connection] = OrderedDict()  # still sending their request, oldest first
        self._waiting: dict[int, _Connection] = {}  # asked the loop
        self._writing: dict[int, _Connection] = {}  # being sent their answer
        self._next_recheck = 0.0
        self._stopping = False
        probe.on_answer = self.wake
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s", self.address)

    def close(self) -> None:
        self._stopping = True
        self.wake()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for conn in list(self._connections.values()):
            self._close(conn)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def filenos(self) -> list[int]:
        """Its descriptors (the listener, the wake-up pair, open clients): a worker forked from the supervisor
        (the compat API) closes them, so it never holds the port or a client's connection."""
        fds = [self._listener.fileno(), self._wake_r.fileno(), self._wake_w.fileno(), *self._connections]
        selector_fd = getattr(self._selector, "fileno", None)
        return fds + ([selector_fd()] if selector_fd is not None else [])

    def wake(self) -> None:
        """Any thread: the server has news to act on (an answer from the loop, a stop)."""
        try:
            self._wake_w.send(b"w")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # -- the three endpoints (the HTTP thread, once the loop answered or did not in time) ---------------------

    def metrics(self, answer: Answer | None, waited: float) -> tuple[int, bytes, str]:
        if answer is None:
            answer = self.probe.last
            if answer is None:
                return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
            answer = Answer(dataclasses.replace(answer.scrape, loop_lag=waited))
        from ipcpool.ops.metrics import render  # prometheus_client: loaded by the first scrape

        return 200, render(answer.scrape), CONTENT_TYPE_METRICS

    def healthz(self, answer: Answer | None, waited: float) -> tuple[int, bytes, str]:
        if answer is None:
            return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
        state = answer.scrape.status.get("state")
        return self._json(200, True, f"the supervisor loop answered in {waited * 1000:.1f} ms (state {state})")

    def readyz(self, answer: Answer | None, waited: float) -> tuple[int, bytes, str]:
        if answer is None:
            return self._json(503, False, f"the supervisor loop did not answer within {self.loop_timeout:g}s")
        verdict = answer.scrape.verdict
        return self._json(200 if verdict.ready else 503, verdict.ready, verdict.ready_reason)

    @staticmethod
    def _json(code: int, ok: bool, reason: str) -> tuple[int, bytes, str]:
        return code, (json.dumps({"ok": ok, "reason": reason}) + "\n").encode(), "application/json"

    routes: dict[str, Route] = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}

    # -- serving: one thread, one selector ---------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for key, events in self._selector.select(self._timeout(now)):
                if isinstance(key.data, _Connection) and self._connections.get(key.data.fd) is not key.data:
                    continue  # closed earlier in this batch (made room for another)
                try:
                    if key.data is _WAKE:
                        self._drain_wake()
                    elif key.data is _LISTENER:
                        self._accept()
                    elif events & selectors.EVENT_READ:
                        self._read(key.data)
                    else:
                        self._write(key.data)
                except Exception:  # one client's trouble never stops the server
                    log.exception("HTTP: serving a connection failed")
                    if isinstance(key.data, _Connection):
                        self._close(key.data)
            now = time.monotonic()
            self._answer_waiting(now)
            self._expire(now)
            if now >= self._next_recheck:
                self._next_recheck = now + RECHECK
                self._keep_reserve()

    def _timeout(self, now: float) -> float | None:
        deadlines = [c.deadline for c in self._waiting.values()]
        deadlines += [c.deadline for c in self._writing.values()]
        if self._reading:
            deadlines.append(next(iter(self._reading.values())).deadline)
            deadlines.append(self._next_recheck)
        if not self._accepting:
            deadlines.append(self._next_recheck)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _fds_left(self) -> int | None:
        """Descriptors the server may still take, the reserve kept; None when there is no limit to keep to."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return None
        try:
            used = open_fds()
        except OSError:  # not even the listing could be opened: none left
            return 0
        return None if used is None else soft - FD_RESERVE - used

    def _accept(self) -> None:
        left = self._fds_left()
        for turn in range(ACCEPT_BATCH):
            # Full: the oldest client still sending its request makes room (a fresh probe always gets in).
            # Only for the connection the selector announced: past it, one may not be there.
            while len(self._connections) >= MAX_CONNECTIONS or (left is not None and left < 1):
                if turn:
                    return  # the next one, if any, is announced again
                if not self._reading:
                    self._pause()
                    return
                self._close(self._reading.popitem(last=False)[1])
                left = None if left is None else left + 1
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("HTTP: cannot accept a connection: %s", exc.strerror)
                    self._pause()
                return  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + REQUEST_TIMEOUT)
            self._connections[conn.fd] = conn
            self._reading[conn.fd] = conn
            self._watch(conn, selectors.EVENT_READ)
            left = None if left is None else left - 1

    def _pause(self) -> None:
        """No room: the listener waits (clients queue in the kernel's backlog) until there is."""
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
            self._next_recheck = time.monotonic() + RECHECK

    def _keep_reserve(self) -> None:
        """The loop's own use grew into the reserve: waiting clients go; the listener waits for room."""
        left = self._fds_left()
        while left is not None and left < 0 and self._reading:
            self._close(self._reading.popitem(last=False)[1])
            left += 1
        room = len(self._connections) < MAX_CONNECTIONS and (left is None or left >= 1)
        if room and not self._accepting and not self._stopping:
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._accepting = True

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            end = conn.head.find(b"\n\n")
        if end < 0:
            if len(conn.head) > MAX_REQUEST_HEAD:
                self._respond(conn, *self._json(431, False, f"the request head is over {MAX_REQUEST_HEAD} bytes"))
            return
        self._request(conn, conn.head[:end].split(b"\n", 1)[0].rstrip(b"\r"))

    def _request(self, conn: _Connection, line: bytes) -> None:
        parts = line.split()
        if len(parts) not in (2, 3):
            self._respond(conn, *self._json(400, False, "not an HTTP request line"))
            return
        method, target = parts[0], parts[1].decode("latin-1")
        path = target.split("?", 1)[0]
        log.debug("HTTP %r %r", method.decode("latin-1"), path)
        if method not in (b"GET", b"HEAD"):
            self._respond(conn, *self._json(405, False, "only GET and HEAD are served"))
            return
        conn.head_only = method == b"HEAD"
        route = self.routes.get(path)
        if route is None:
            self._respond(conn, *self._json(404, False, "not found: try /metrics, /healthz or /readyz"))
            return
        del self._reading[conn.fd]
        self._watch(conn, 0)
        conn.route = route
        conn.asked = time.monotonic()
        conn.deadline = conn.asked + self.loop_timeout
        conn.ticket = self.probe.question()
        self._waiting[conn.fd] = conn

    def _answer_waiting(self, now: float) -> None:
        for conn in list(self._waiting.values()):
            answer = self.probe.answered(conn.ticket)
            if answer is None and now < conn.deadline:
                continue
            del self._waiting[conn.fd]
            assert conn.route is not None
            try:
                code, body, kind = conn.route(self, answer, now - conn.asked)
            except Exception as exc:  # a probe never takes the server down
                log.exception("HTTP answer failed")
                code, body, kind = self._json(500, False, f"{type(exc).__name__}: {exc}")
            self._respond(conn, code, body, kind)

    def _respond(self, conn: _Connection, code: int, body: bytes, kind: str) -> None:
        self._reading.pop(conn.fd, None)
        head = (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        conn.out = head if conn.head_only else head + body
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        self._writing[conn.fd] = conn
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client left
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
        else:
            self._close(conn)

    def _expire(self, now: float) -> None:
        while self._reading:
            oldest = next(iter(self._reading.values()))
            if oldest.deadline > now:
                break
            self._close(oldest)
        for conn in [c for c in self._writing.values() if c.deadline <= now]:
            self._close(conn)

    def _watch(self, conn: _Connection, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Connection) -> None:
        if self._connections.get(conn.fd) is not conn:
            return  # closed already (its descriptor may be another connection's now)
        del self._connections[conn.fd]
        self._reading.pop(conn.fd, None)
        self._waiting.pop(conn.fd, None)
        self._writing.pop(conn.fd, None)
        self._watch(conn, 0)
        conn.sock.close()
