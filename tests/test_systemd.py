"""systemd's notify protocol against a real datagram socket, as systemd listens for it (Type=notify)."""

from __future__ import annotations

import select
import signal
import socket
import tempfile
from pathlib import Path

from conftest import backend_config, write_config


class NotifySocket:
    """What systemd does for Type=notify: a bound datagram socket, read message by message."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def expect(self, line: str, timeout: float = 30.0) -> list[str]:
        """Read notifications until one carries ``line``; returns that notification's lines."""
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            assert ready, f"no {line!r} within {timeout}s; seen: {self.seen}"
            lines = self.sock.recv(4096).decode().split("\n")
            self.seen.extend(lines)
            if line in lines or any(seen.startswith(line) for seen in lines):
                return lines

    def close(self) -> None:
        self.sock.close()


def test_ready_status_watchdog_reloading_and_stopping(tmp_path, root, env, backend, supervisor_factory):
    path = Path(tempfile.mkdtemp(prefix="sd-")) / "notify"  # short: a socket path has 107 bytes at most
    notify = NotifySocket(path)
    env["NOTIFY_SOCKET"] = str(path)
    env["WATCHDOG_USEC"] = "400000"  # WatchdogSec=0.4s: a ping every 0.2 s from the loop
    try:
        config = backend_config(tmp_path, root, backend)
        sup = supervisor_factory(config, wait_ready=False)
        ready = notify.expect("READY=1")
        assert "STATUS=2 workers ready" in ready
        assert "Enhanced IPC system started" in sup.log(), "READY=1 comes once the workers are ready"
        notify.expect("WATCHDOG=1")
        notify.expect("WATCHDOG=1")
        status = notify.expect("STATUS=")
        assert any(line.startswith("STATUS=") and "queued" in line for line in status)
        sup.signal(signal.SIGHUP)
        reloading = notify.expect("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        after = notify.expect("READY=1")
        assert any(line.startswith("STATUS=reload done") for line in after)
        sup.signal(signal.SIGTERM)
        assert "STATUS=draining" in notify.expect("STOPPING=1")
        assert sup.wait(30) == 0
    finally:
        notify.close()
        path.unlink()
        path.parent.rmdir()


def test_an_abstract_notify_socket_works_too(tmp_path, root, env, supervisor_factory):
    name = f"ipcpool-test-{tmp_path.name}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + name)
    env["NOTIFY_SOCKET"] = "@" + name
    try:
        sup = supervisor_factory(write_config(tmp_path / "c.toml", root), wait_ready=False)
        ready, _, _ = select.select([notify], [], [], 30)
        assert ready and "READY=1" in notify.recv(4096).decode().split("\n")
        assert sup.stop() == 0
    finally:
        notify.close()
