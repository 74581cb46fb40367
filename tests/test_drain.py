"""Stopping and holding: SIGINT drains like SIGTERM, a second SIGINT stops at once, shutdown_grace cuts
a drain short, and prefetch bounds what a worker holds.

Handlers wait on a gate file the test creates, so "still running" is a state
the test controls, never a guess about how long a sleep lasts on this machine.
Each drain is bounded by the test's own wait deadline, not by a timed assertion.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import acked, files, records, wait_until, write_config

from ipcpool import Client

LONG = 600.0  # seconds: a grace or timeout no test waits for, so only the behaviour under test can end a drain

pytestmark = pytest.mark.portable  # also run with Linux's interfaces removed (.ci/run)


def _ctrl_c(pid: int) -> None:
    """SIGINT to the supervisor's whole process group, as Ctrl-C in its terminal would (workers included)."""
    os.killpg(pid, signal.SIGINT)


def _gated(tmp_path: Path, root: Path, *, count: int = 1) -> tuple[Path, list[str]]:
    gate = tmp_path / "gate"
    with Client(root, "main") as client:
        ids = [client.send("main", "task", {"gate": str(gate), "n": i}, requires_ack=True) for i in range(count)]
    return gate, ids


def test_sigint_drains_the_running_message_and_returns_the_rest(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "prefetch": 4,
                                                                        "shutdown_grace": LONG,
                                                                        "handler_timeout": LONG}})
    sup = supervisor_factory(config)
    gate, (running,) = _gated(tmp_path, root)
    wait_until(lambda: records(tmp_path), 20, message="the gated message running")
    with Client(root, "main") as client:  # the one worker is busy: these are held or queued, not started
        rest = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(5)]
    _ctrl_c(sup.pid)
    wait_until(lambda: "received SIGINT: draining" in sup.log(), 20, message="the drain announced")
    # status.json says "draining" only after the worker was told to stop: open the gate after that, so the
    # worker cannot start a queued message in between
    wait_until(lambda: (s := sup.status()) and s["state"] == "draining", 20, message="a draining status")
    gate.touch()
    assert sup.wait(30) == 0, sup.log()
    assert acked(root, [running]), "the message in a worker's hands was finished"
    assert [r["id"] for r in records(tmp_path)] == [running], "nothing new was started during the drain"
    assert files(root, "main", "messages") == sorted(f"{i}.json" for i in rest), "the rest went back"
    assert files(root, "main", "processing") == []
    assert files(root, "main", "errors") == []


def test_a_second_sigterm_lets_the_drain_go_on(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "shutdown_grace": LONG,
                                                                        "handler_timeout": LONG}})
    sup = supervisor_factory(config)
    gate, (running,) = _gated(tmp_path, root)
    wait_until(lambda: records(tmp_path), 20, message="the gated message running")
    os.kill(sup.pid, signal.SIGTERM)
    wait_until(lambda: "received SIGTERM: draining" in sup.log(), 20, message="the drain announced")
    os.kill(sup.pid, signal.SIGTERM)
    wait_until(lambda: "received SIGTERM again: the drain goes on" in sup.log(), 20, message="the second one seen")
    assert sup.proc is not None and sup.proc.poll() is None, "the second SIGTERM did not end the drain"
    gate.touch()
    assert sup.wait(30) == 0, sup.log()
    assert acked(root, [running]), "the message in the worker's hands was finished"
    assert files(root, "main", "processing") == []


def test_a_second_sigint_stops_at_once_and_puts_the_held_message_back(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "shutdown_grace": LONG,
                                                                        "handler_timeout": LONG}})
    sup = supervisor_factory(config)
    gate, (held,) = _gated(tmp_path, root)  # the gate stays shut while this supervisor runs
    wait_until(lambda: records(tmp_path), 20, message="the gated message running")
    _ctrl_c(sup.pid)
    wait_until(lambda: "received SIGINT: draining" in sup.log(), 20, message="the drain announced")
    _ctrl_c(sup.pid)
    assert sup.wait(30) == 0, sup.log()  # with a 600 s grace, only the second SIGINT can end it this soon
    assert "second SIGINT: stopping now" in sup.log()
    assert files(root, "main", "messages") == [f"{held}.json"], "the held message went back to messages/"
    assert files(root, "main", "processing") == []
    assert not acked(root, [held])
    gate.touch()
    again = supervisor_factory(config)
    wait_until(lambda: acked(root, [held]), 20, message="the message handled after a restart")
    assert again.stop() == 0


def test_shutdown_grace_cuts_a_drain_short(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"shutdown_grace": 1.0,
                                                                        "handler_timeout": LONG}})
    sup = supervisor_factory(config)
    _gate, (held,) = _gated(tmp_path, root)  # a handler that would run for ever
    wait_until(lambda: records(tmp_path), 20, message="the gated message running")
    sup.signal(signal.SIGTERM)
    assert sup.wait(30) == 0, sup.log()  # the deadline: a 1 s grace, not the handler, ends the drain
    assert "shutdown grace ran out" in sup.log()
    assert files(root, "main", "messages") == [f"{held}.json"], "the cut message went back to messages/"
    assert files(root, "main", "processing") == []
    assert not acked(root, [held])


def test_prefetch_bounds_what_each_worker_holds(tmp_path, root, supervisor_factory):
    """[pool] prefetch = 1: with both workers busy, the rest stays in messages/ for whoever is free first."""
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 2, "prefetch": 1,
                                                                        "handler_timeout": LONG}})
    sup = supervisor_factory(config)
    gate, ids = _gated(tmp_path, root, count=4)
    wait_until(lambda: len(records(tmp_path)) == 2, 20, message="both workers running one")
    assert len({r["pid"] for r in records(tmp_path)}) == 2
    status = wait_until(lambda: (s := sup.status()) and all(w["running"] for w in s["workers"]) and s, 20,
                        message="a status with both workers running one")
    # running: the one it is handling; held: handed over but not started (its prefetch beyond that one)
    assert [(w["running"], w["held"]) for w in status["workers"]] == [(1, 0), (1, 0)], status["workers"]
    assert len(files(root, "main", "processing")) == 2, "one claimed per worker"
    assert len(files(root, "main", "messages")) == 2, "the rest not taken ahead of time"
    gate.touch()
    wait_until(lambda: acked(root, ids), 30, message="all four acked")
    assert sup.stop() == 0
