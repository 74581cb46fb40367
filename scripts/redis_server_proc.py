"""A private redis-server for the Redis benchmark: a free loopback port, its own folder, AOF everysec.

The setting a production queue should run with (see the README's Redis
section): the AOF is fsynced once a second, there is no RDB snapshot.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench_common import BenchError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServerProc:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RedisServerProc:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--logfile",
             str(self.folder / "redis.log")], start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().ping()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("redis-server did not start: " +
                                     (self.folder / "redis.log").read_text()[-500:]) from None
                time.sleep(0.02)

    def client(self):
        from redis import Redis

        return Redis.from_url(self.url)

    def version(self) -> str:
        with self.client() as client:
            return str(client.info("server")["redis_version"])

    def flush(self) -> None:
        """An empty server for the next measurement (and its AOF rewritten, so it does not grow)."""
        with self.client() as client:
            client.flushall()
            client.bgrewriteaof()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
