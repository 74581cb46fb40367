"""``ipcpool top`` under a real pseudo-terminal: the screen, the supervisor going away, Ctrl-C."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

from conftest import backend_config, write_config

from ipcpool import Client

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """A program on a pty of its own, as a person's terminal runs it (Ctrl-C is a real SIGINT)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # 160 x 50, as a window is
            os.chdir(cwd)
            os.execve(argv[0], argv, dict(env, TERM="xterm-256color", COLUMNS="160", LINES="50"))
        self.screen = ""

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """Read output until ``text`` appears on the screen (escape codes stripped)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the screen shows:\n{self.screen[-3000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the program ended: its last output is all there is
                    chunk = b""
                if not chunk:
                    assert text in self.screen, f"ended without {text!r}:\n{self.screen[-3000:]}"
                self.screen += ANSI.sub("", chunk.decode("utf-8", "replace"))
        return self.screen

    def wait(self, timeout: float = 30.0) -> int:
        """The program's exit code, once it has ended on its own (its output read meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.screen += ANSI.sub("", os.read(self.fd, 65536).decode("utf-8", "replace"))
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the program did not end within {timeout}s")

    def close(self) -> None:
        """Whatever happened, leave no program behind and no descriptor open."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = 0
        try:
            os.close(self.fd)
        except OSError:
            pass

    def ctrl_c(self) -> int:
        """Ctrl-C at the terminal (a real SIGINT from the line discipline); the exit code."""
        os.write(self.fd, b"\x03")
        return self.wait()


def test_top_shows_workers_and_groups_says_when_the_supervisor_is_gone_and_ends_on_ctrl_c(
        tmp_path, root, env, backend, supervisor_factory):
    config = backend_config(tmp_path, root, backend, spool={"groups": ["main", "other"]})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        running = client.send("main", "task", {"gate": str(gate)})
        term = Terminal([sys.executable, "-m", "ipcpool", "top", "--config", str(config)], env, tmp_path)
        try:
            term.wait_for(running)  # the running message's id, on its worker's row
            # A frame arrives in pieces: each part is waited for, not assumed to have come with the first.
            for text in ("workers", "groups", "handled", "restarts", "rate/s", "main", "other", "Ctrl-C to leave",
                         *(str(pid) for pid in sup.worker_pids())):
                term.wait_for(text)
            gate.touch()
            assert sup.stop() == 0
            term.wait_for("supervisor is gone")
            assert term.ctrl_c() == 0
        finally:
            term.close()


def test_status_watch_is_the_same_view(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    term = Terminal([sys.executable, "-m", "ipcpool", "status", "--watch", "--config", str(config)], env, tmp_path)
    try:
        term.wait_for("workers")
        term.wait_for(str(sup.worker_pids()[0]))
        assert term.ctrl_c() == 0
    finally:
        term.close()
    assert sup.stop() == 0


def test_long_errors_commands_show_progress_on_a_terminal_and_stay_quiet_when_piped(
        tmp_path, root, env, supervisor_factory):
    from conftest import ipcpool_cli, wait_until

    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        for n in range(12):
            client.send("main", "nohandler", {"n": n})
    wait_until(lambda: len(list((root / "main" / "errors").glob("*.error.json"))) == 12, 30, message="12 errors")
    assert sup.stop() == 0
    term = Terminal([sys.executable, "-m", "ipcpool", "errors", "retry", "--all", "--config", str(config)], env,
                    tmp_path)
    try:
        term.wait_for("retried main/")
        term.wait_for("/12")  # the bar, with its count
        assert re.search(r"retrying.*\d+/12", term.screen), term.screen
        assert term.wait() == 0
    finally:
        term.close()
    sup = supervisor_factory(config)  # the retried twelve are refused again: back in errors/
    wait_until(lambda: len(list((root / "main" / "errors").glob("*.error.json"))) == 12, 30, message="12 again")
    assert sup.stop() == 0
    piped = ipcpool_cli(env, tmp_path, "errors", "purge", "--all", "--config", str(config))
    assert piped.returncode == 0
    assert piped.stdout == "purged 12 quarantined message(s)\n", "piped: the result line alone, no bar"
