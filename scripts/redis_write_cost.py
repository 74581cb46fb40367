#!/usr/bin/env python3
"""What a worker's completion write costs the worker, with and without waking redis-server.

    python scripts/redis_write_cost.py               # 20,000 writes each way
    python scripts/redis_write_cost.py --count 50000 --work-us 80

A worker on Redis sends one completion per message (one MULTI/EXEC, replies
off) before it starts the next handler: that write is the ack window, so it
is never batched. This times that write alone, against a private
redis-server (scripts/redis_server_proc.py): back to back (Redis is busy
reading and never sleeps), then with ``--work-us`` of busy Python between
writes, as a handler would leave (Redis has gone back to epoll_wait, so each
write wakes it). Both rows come from the same run; the ratio between them is
the figure, not either number alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench_common import machine_info
from redis_server_proc import RedisServerProc


def completion_bytes() -> bytes:
    """A completion's bytes exactly as RedisStore sends them: MULTI, the store's completion commands, EXEC."""
    from hiredis import pack_command

    from ipcpool.transport.redis.keys import Keys
    from ipcpool.transport.redis.scripts import complete_commands

    commands = [("MULTI",), *complete_commands(Keys("cost"), "main", "1-1", "x", "x", "{}", 60, 60), ("EXEC",)]
    return b"".join(pack_command(c) for c in commands)


def _write_all(fd: int, data: bytes) -> None:
    """As the lane writes: one write(2), and only if the socket is full, a wait for room (back to back, it fills)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def measure(fd: int, data: bytes, count: int, work_s: float) -> tuple[float, float]:
    """(wall µs in write(2), system CPU µs) per write; ``work_s`` of spinning (user CPU only) between writes."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    in_write = 0.0
    for _ in range(count):
        start = time.perf_counter()
        _write_all(fd, data)
        done = time.perf_counter()
        in_write += done - start
        if work_s:
            end = done + work_s
            while time.perf_counter() < end:
                pass
    after = resource.getrusage(resource.RUSAGE_SELF)
    return in_write / count * 1e6, (after.ru_stime - before.ru_stime) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="writes per row")
    parser.add_argument("--work-us", type=float, default=50.0, help="busy Python between writes in row 2 (µs)")
    args = parser.parse_args(argv)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="ipcpool-write-cost-") as folder:
        server = RedisServerProc(Path(folder) / "redis").start()
        try:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.settimeout(10)  # non-blocking underneath, as redis-py's sockets are
                sock.sendall(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n")
                data = completion_bytes()
                rows = [("back to back (Redis never sleeps)", measure(sock.fileno(), data, args.count, 0.0)),
                        (f"{args.work_us:g} µs of work between (each write wakes Redis)",
                         measure(sock.fileno(), data, args.count, args.work_us / 1e6))]
            version = server.version()
        finally:
            server.stop()
    print(f"CPU: {machine['cpu_model']} ({machine['cpu_count']} CPUs), Python {machine['python']}, "
          f"{machine['kernel']}; redis-server {version}, loopback TCP, {len(data)}-byte completion, "
          f"{args.count:,} writes per row\n")
    print("| writes | µs in write(2) | system CPU µs per write |\n|---|---|---|")
    for label, (wall, system) in rows:
        print(f"| {label} | {wall:.1f} | {system:.1f} |")
    print(f"\nwaking Redis makes the write {rows[1][1][0] / max(rows[0][1][0], 1e-9):.1f}x as long")
    return 0


if __name__ == "__main__":
    sys.exit(main())
