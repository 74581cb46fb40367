"""Connecting to Redis, and living through its outages (the one place that builds redis-py clients).

``[redis] url`` (or ``IPCPOOL_REDIS_URL``) may carry an ACL user and password
and may be ``rediss://`` (TLS, verified against ``[redis] ca_file`` when
given); it is logged only with the password replaced. An outage is logged
once when it starts and once when it ends, never once per attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.exceptions

try:
    from hiredis import pack_command as _pack
except ImportError:  # redis-py packs, more slowly
    _pack = None

from ipcpool.config import Config, redact_url
from ipcpool.errors import TransportUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a lost or refused connection looks like, or a full Redis (maxmemory reached under noeviction: it
# refuses writes until it has room): worth waiting for and retrying, never a crash.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
               redis.exceptions.OutOfMemoryError, OSError)
RETRY_FIRST, RETRY_MAX = 0.1, 5.0  # seconds between attempts during an outage: doubling, capped


def connect(config: Config, *, timeout: float | None = 10.0) -> redis.Redis:
    """A client for ``[redis] url``: bytes in and out (message bodies are bytes), never decoded or unpickled."""
    return redis.Redis.from_url(config.redis.url, **client_options(config, timeout))


def client_options(config: Config, timeout: float | None) -> dict[str, Any]:
    """redis-py's options for ``[redis]``, the same for the blocking and the asyncio client."""
    # RESP2: the replies read straight off a connection (the blocking reads) are lists on every server.
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": 5.0,
                               "health_check_interval": 30, "decode_responses": False, "protocol": 2}
    if config.redis.url.startswith("rediss://") and config.redis.ca_file:
        options["ssl_ca_certs"] = config.redis.ca_file
    return options


class Lane:
    """One connection of a client's, used directly: commands out, their replies in, nothing else.

    For the calls made once per message (a worker's fetch and complete, a
    sender's publish): redis-py's per-call machinery (pool checkout, retry
    wrapper, observability hooks, a pipeline's SCRIPT EXISTS before each
    run) cost more CPU than the round trip. Commands are packed by hiredis
    when it is installed (the ``redis`` extra brings it). Replies are raw (no
    response callbacks). It quacks like a client for ``Script.__call__``.

    ``fire`` sends commands Redis does not answer (``CLIENT REPLY OFF``): a
    worker's completions. Nothing comes back for them, so the connection
    never holds an unread reply because of them, and a worker SIGKILLed
    after firing closes it with FIN, not a reset: what it sent is delivered.
    The next command that wants a reply turns replies back on first (whose
    "OK" ``receive`` drops), and Redis runs everything in the order sent, so
    that reply also says Redis has read every fired command before it.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._conn = client.connection_pool.make_connection()
        self._quiet = False  # CLIENT REPLY OFF is in effect on the connection
        self._skip = 0  # replies to drop before the next one read: CLIENT REPLY ON's "OK"

    def execute(self, *args: Any) -> Any:
        self.send(*args)
        return self.receive()

    def send(self, *args: Any) -> None:
        """A command out; its reply is read by ``receive`` (the caller keeps count of what it sent)."""
        self.send_many([args])

    def send_many(self, commands: list[tuple[Any, ...]]) -> None:
        """Several commands in one write: a pipeline without a transaction."""
        if self._quiet:
            self._write([_REPLY_ON, *commands])
            self._quiet = False
            self._skip += 1
        else:
            self._write(commands)

    def fire(self, commands: list[tuple[Any, ...]]) -> None:
        """Commands in one write that Redis runs without answering (see the class's docstring)."""
        self._write(commands if self._quiet else [_REPLY_OFF, *commands])
        self._quiet = True

    def _write(self, commands: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        packed = [b"".join(_pack(args) for args in commands)] if _pack is not None else conn.pack_commands(commands)
        try:
            sock = conn._sock
            if len(packed) == 1 and type(sock) is socket.socket:
                # One write(2). The socket is non-blocking (it has a timeout), and Python's send() would
                # poll(2) before every write: a system call per message for nothing. What the kernel
                # does not take at once goes the usual way, waiting at most the socket's timeout.
                data = packed[0]
                try:
                    written = os.write(sock.fileno(), data)
                except BlockingIOError:
                    written = 0
                if written == len(data):
                    return
                packed = [data[written:]]
            conn.send_packed_command(packed, check_health=False)
        except UNAVAILABLE:
            self._disconnect()  # the next call connects again
            raise

    def receive(self) -> Any:
        try:
            while self._skip:
                self._skip -= 1
                self._conn.read_response()
            return self._conn.read_response()
        except UNAVAILABLE:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        """A new connection answers every command again, and owes nothing."""
        self._conn.disconnect()
        self._quiet = False
        self._skip = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: Any) -> str:
        sha = self.execute("SCRIPT", "LOAD", script)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    def exists(self, *names: str) -> int:
        return int(self.execute("EXISTS", *names))

    def close(self) -> None:
        self._disconnect()


_REPLY_OFF = ("CLIENT", "REPLY", "OFF")
_REPLY_ON = ("CLIENT", "REPLY", "ON")


def where(config: Config) -> str:
    """``[redis] url`` as it may be shown: the password replaced by ***."""
    return redact_url(config.redis.url)


class Outage:
    """Tracks one connection's outages: one line when Redis goes away, one when it is back."""

    def __init__(self, config: Config, who: str, *, cap: float = RETRY_MAX, gives_up_after: float | None = None
                 ) -> None:
        self.where = where(config)
        self.who = who
        # A sender gives up after [redis] outage_timeout: its first line says so, so nobody waits in the dark.
        self.how_long = (f" for up to {gives_up_after:g}s ([redis] outage_timeout), then gives up"
                         if gives_up_after is not None else "")
        self.cap = min(RETRY_MAX, cap)  # the longest wait between two attempts
        self.since: float | None = None
        self.full = False  # Redis answers, but refuses writes (maxmemory): not the same fix as a dead link
        self.next_try = 0.0
        self._delay = RETRY_FIRST

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.full = isinstance(exc, redis.exceptions.OutOfMemoryError)
            if self.full:
                log.error("Redis at %s is full and refuses writes (%s); the %s retries with back-off%s (raise "
                          "maxmemory, or drain what fills it)", self.where, exc, self.who, self.how_long)
            else:
                log.error("Redis at %s is unreachable (%s); the %s retries with back-off%s", self.where, exc,
                          self.who, self.how_long or " and carries on when it is back")
            self._delay = min(RETRY_FIRST, self.cap)
        self.next_try = now + self._delay
        self._delay = min(self.cap, self._delay * 2)

    def ok(self) -> None:
        if self.since is not None:
            log.info("Redis at %s is back after %.1fs", self.where, time.monotonic() - self.since)
            self.since = None

    @property
    def what(self) -> str:
        """What is wrong, in the words an operator acts on: the network, or maxmemory."""
        return "full and refuses writes (maxmemory)" if self.full else "unreachable"

    def describe(self) -> str | None:
        """What an operator reads in ``status`` and /readyz while this outage lasts, or None."""
        if self.since is None:
            return None
        return f"Redis is {self.what} since {round(time.monotonic() - self.since, 1)}s"

    def may_try(self) -> bool:
        return self.since is None or time.monotonic() >= self.next_try


def retrying(outage: Outage, timeout: float, operation: Callable[[], T]) -> T:
    """Run ``operation`` until it succeeds, backing off through an outage; TransportUnavailable after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = operation()
        except UNAVAILABLE as exc:
            outage.failed(exc)
            if outage.next_try > deadline:
                raise TransportUnavailable(f"Redis at {outage.where} is {outage.what} ({exc}); gave up after "
                                           f"{timeout:g}s ([redis] outage_timeout)") from exc
            time.sleep(max(0.0, outage.next_try - time.monotonic()))
            continue
        outage.ok()
        return result


def unavailable(exc: BaseException, config: Config) -> TransportUnavailable:
    return TransportUnavailable(f"Redis at {where(config)} is unreachable: {exc}")
