"""The bare loop: the least a directory queue can do, as the floor for every other figure.

One process publishes by tmp+rename into ``<spool>/<group>/messages/``; one
process consumes with raw inotify (ctypes ``inotify_init1`` /
``inotify_add_watch`` / ``read``): read the file, parse the JSON, write
``acks/<id>.ack`` by tmp+rename, unlink the message. No pool, no supervision,
no claim step, no dedupe. An inotify queue overflow triggers a rescan.

    python scripts/bare_loop.py consume --work W --groups 1 --records R
    python scripts/bare_loop.py produce|roundtrip --work W --group main --count N [--rate R] --out F
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import struct
import sys
import time
from pathlib import Path

from bench_common import (
    READY,
    BenchError,
    Proc,
    Recorder,
    add_producer_args,
    child_env,
    envelope,
    group_names,
    make_group_dirs,
    python_argv,
    run_producer,
    run_roundtrip,
    write_ack,
    write_atomic,
    write_summary,
)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Inotify:
    """One raw inotify descriptor, through libc directly."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._libc = libc
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def read(self, timeout: float | None = None) -> list[tuple[int, int, str]]:
        """(wd, mask, name) of the next batch of events; [] when ``timeout`` passes first."""
        if timeout is not None and not select.select([self.fd], [], [], timeout)[0]:
            return []
        buf = os.read(self.fd, 1 << 16)
        events = []
        offset = 0
        while offset + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            start = offset + _EVENT.size
            name = buf[start:start + length].rstrip(b"\0").decode()
            events.append((wd, mask, name))
            offset = start + length
        return events

    def close(self) -> None:
        os.close(self.fd)


class AckWaiter:
    """Waits for ``<acks>/<name>`` to appear: an existence check, then inotify events."""

    def __init__(self, acks_dir: Path) -> None:
        self.acks_dir = str(acks_dir)
        self.inotify = Inotify()
        self.inotify.add_watch(self.acks_dir, IN_MOVED_TO | IN_ONLYDIR)

    def wait(self, name: str, timeout: float) -> None:
        path = f"{self.acks_dir}/{name}"
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"no ack {name} after {timeout:g}s")
            if any(event[2] == name for event in self.inotify.read(min(remaining, 0.5))):
                return


# -- consumer --------------------------------------------------------------------------------------


def consume(spool: Path, groups: list[str], recorder: Recorder) -> None:
    base = str(spool)
    inotify = Inotify()
    wd_group = {inotify.add_watch(f"{base}/{g}/messages", IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR): g
                for g in groups}
    print(READY, flush=True)

    def handle(group: str, name: str) -> None:
        path = f"{base}/{group}/messages/{name}"
        try:
            with open(path, "rb") as handle_:
                data = handle_.read()
        except FileNotFoundError:
            return  # an event for a file already handled by a scan
        message = json.loads(data)
        payload = message["payload"]
        recorder.record(payload["i"], payload["t"], time.time())
        if message.get("requiresAck"):
            write_ack(f"{base}/{group}", message["id"])
        os.unlink(path)

    def scan(group: str) -> None:
        with os.scandir(f"{base}/{group}/messages") as entries:
            names = [e.name for e in entries if not e.name.startswith(".")]
        for name in names:
            handle(group, name)

    for group in groups:  # what was queued before the watch (start-up drain)
        scan(group)
    while True:
        for wd, mask, name in inotify.read():
            if mask & IN_Q_OVERFLOW:
                for group in groups:
                    scan(group)
                continue
            group = wd_group.get(wd)
            if group is not None and name and not name.startswith("."):
                handle(group, name)


# -- producer --------------------------------------------------------------------------------------


def publish(spool: Path, group: str, index: int, t_sent: float) -> str:
    message = envelope(group, index, t_sent)
    mid = message["id"]
    gdir = f"{spool}/{group}"
    write_atomic(f"{gdir}/tmp/{mid}.json.tmp", f"{gdir}/messages/{mid}.json", json.dumps(message).encode())
    return mid


class BareSystem:
    """The orchestrator's handle on the bare loop."""

    name = "bare loop"
    script = "bare_loop.py"
    peer = False

    def skip_reason(self) -> str | None:
        return None if sys.platform.startswith("linux") else "skipped (needs Linux inotify)"

    def prepare(self, work: Path, groups: list[str]) -> None:
        make_group_dirs(work / "spool", groups)

    def start(self, work: Path, groups: list[str], records: Path, *, workers: int, wait_ready: bool = True) -> Proc:
        argv = python_argv(self.script, "consume", "--work", str(work), "--groups", str(len(groups)),
                           "--records", str(records))
        proc = Proc(argv, work / "consumer.log", env=child_env(), cwd=work)
        if wait_ready:
            proc.wait_for_text(READY, 60.0, "bare-loop consumer")
        return proc

    def producer_argv(self, *args: str) -> list[str]:
        return python_argv(self.script, *args)

    def ack_dir(self, work: Path, group: str) -> Path:
        return work / "spool" / group / "acks"

    def processes(self, proc: Proc) -> dict[str, list[int]]:
        return {"consumer": [proc.pid]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--groups", type=int, default=1)
    c.add_argument("--records", type=Path, required=True)
    for role in ("produce", "roundtrip"):
        add_producer_args(sub.add_parser(role))
    args = parser.parse_args(argv)
    spool = args.work / "spool"
    if args.role == "consume":
        consume(spool, group_names(args.groups), Recorder(args.records))
        return 0
    if args.role == "produce":
        summary = run_producer(lambda i, t: publish(spool, args.group, i, t), args.count, args.rate)
    else:
        waiter = AckWaiter(spool / args.group / "acks")
        summary = run_roundtrip(lambda i, t: waiter.wait(publish(spool, args.group, i, t) + ".ack", args.timeout),
                                args.count, (BenchError,))
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
