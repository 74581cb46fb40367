"""``ipcpool top`` under a real pseudo-terminal: the screen, the supervisor going away, Ctrl-C."""

from __future__ import annotations

import re
import sys

from conftest import Terminal, backend_config, write_config

from ipcpool import Client


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
