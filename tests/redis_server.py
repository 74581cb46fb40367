"""A real ``redis-server`` for the tests: on a free loopback port, in its own folder, with AOF on.

One server per test process is shared by the tests that only talk to Redis
(each uses its own key prefix); tests that kill, restart or reconfigure Redis
start their own. Where redis-server is not installed the tests that need it
skip with the reason, except under CI (``IPCPOOL_REQUIRE_REDIS=1``, set by
``.ci/run``, which installs it): there they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE_ENV = "IPCPOOL_REQUIRE_REDIS"
HELPER_PIDS: set[int] = set()  # long-lived helpers the leftover-process check must not count


def require_redis_server() -> str:
    """The redis-server binary; skips (or, under CI, fails) the test when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}, and {REQUIRE_ENV} says the Redis tests must run")
        pytest.skip(reason)
    try:
        import redis  # noqa: F401
    except ImportError:
        reason = "redis-py is not installed (pip install -e '.[test]' brings it)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``kill`` and ``restart`` keep its folder, so its AOF is replayed."""

    def __init__(self, folder: Path, *extra: str, tls: bool = False) -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()  # plain TCP: the readiness check (and plain clients)
        self.tls_port = free_port() if tls else None
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        if tls:
            self._make_certificates()

    @property
    def url(self) -> str:
        if self.tls_port is not None:
            return f"rediss://127.0.0.1:{self.tls_port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    def _make_certificates(self) -> None:
        """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed (.ci/run installs it)")
        f = self.folder

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=f, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=ipcpool test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
        (f / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log"), *self.extra]
        if self.tls_port is not None:
            f = self.folder
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(f / "server.crt"), "--tls-key-file",
                     str(f / "server.key"), "--tls-ca-cert-file", str(f / "ca.crt"), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        HELPER_PIDS.add(self.proc.pid)
        deadline = time.monotonic() + 30
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.folder / 'redis.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 30 s")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up (a password is asked for)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what survives is what the AOF holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            HELPER_PIDS.discard(self.proc.pid)
