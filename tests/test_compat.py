"""The original API: ``start_enhanced_ipc``, ``get_ipc_system``, ``IPCMessageType``, ``IPCSystem``.

Handlers here are callables defined in this module; the compat system forks
its supervisor (and that forks its workers) from the test process, so they are
inherited. Each handler appends one JSON line per call to a file under
tmp_path, which the test reads back. Every system gets its own tmp root.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_until

import ipcpool.compat
from ipcpool import AckTimeout, IPCMessageType, Message, get_ipc_system, start_enhanced_ipc
from ipcpool.compat import IPCSystem
from ipcpool.config import Config, parse_config
from ipcpool.localroot import read_status
from ipcpool.ops.health import judge


def _config(root: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, dict[str, Any]] = {
        "spool": {"root": str(root), "groups": ["main"], "settle_time": 0.3, "rescan_interval": 1.0},
        "pool": {"workers": 2, "handler_timeout": 10.0, "shutdown_grace": 5.0, "kill_grace": 0.5},
        "retry": {"attempts": 1, "delay": 0.01},
        "heartbeat": {"interval": 0.25, "miss_limit": 4},
        "ack": {"timeout": 5.0, "max_retries": 1, "retry_delay": 0.1},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


def _append(path: Path, entry: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def message_recorder(path: Path, label: str) -> Callable[[Message], Any]:
    """A handler: one line per message, tagged with ``label``."""
    def handle(message: Message) -> str:
        _append(path, {"handler": label, "id": message.id, "type": message.type, "group": message.group,
                       "payload": message.payload, "pid": os.getpid()})
        return "ok"
    return handle


def callback_recorder(path: Path) -> Callable[[str, Any], None]:
    """The old interface: callback(group_folder, data)."""
    def callback(group_folder: str, data: Any) -> None:
        _append(path, {"group": group_folder, "data": data, "pid": os.getpid()})
    return callback


def _wait_ready(system: IPCSystem, timeout: float = 30.0) -> None:
    def ready() -> bool:
        assert system.running, "the compat supervisor exited early"
        return judge(read_status(system.config.spool.root)).healthy
    wait_until(ready, timeout, message="a healthy compat pool")


def _tree(system: IPCSystem) -> list[psutil.Process]:
    proc = psutil.Process(system._process.pid)
    return [proc, *proc.children(recursive=True)]


def _stop_and_check_no_processes(system: IPCSystem) -> None:
    tree = _tree(system)
    assert len(tree) >= 1 + system.config.pool.workers, "the supervisor and its workers were running"
    system.stop()
    assert not system.running
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"stop() left processes: {[p.pid for p in alive]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def systems() -> Iterator[list[IPCSystem]]:
    """Systems a test started; stopped at teardown even if the test failed half-way."""
    started: list[IPCSystem] = []
    yield started
    for system in started:
        system.stop()


def test_message_types_keep_the_original_names():
    assert [t.value for t in IPCMessageType] == ["task", "command", "response", "error", "heartbeat"]
    assert str(IPCMessageType.TASK) == "task"
    assert IPCMessageType("command") is IPCMessageType.COMMAND


def test_registered_handlers_receive_messages_and_acks_are_written(tmp_path, systems):
    root = tmp_path / "ipc"
    out = tmp_path / "handled.jsonl"
    system = IPCSystem(_config(root))
    systems.append(system)
    system.register_handler(IPCMessageType.TASK, message_recorder(out, "task"))
    system.register_handler("custom", message_recorder(out, "custom"))
    system.start()
    _wait_ready(system)

    task_id = system.send("main", IPCMessageType.TASK, {"taskId": 123}, True)
    custom_id = system.send("main", "custom", {"n": 1})
    ack = root / "main" / "acks" / f"{task_id}.ack"
    wait_until(ack.exists, 20, message="the task's ack")
    wait_until(lambda: len(_lines(out)) >= 2, 20, message="both messages handled")

    by_id = {line["id"]: line for line in _lines(out)}
    assert sorted(by_id) == sorted([task_id, custom_id])
    assert by_id[task_id] == {**by_id[task_id], "handler": "task", "type": "task", "group": "main",
                              "payload": {"taskId": 123}}
    assert by_id[custom_id]["handler"] == "custom" and by_id[custom_id]["payload"] == {"n": 1}
    assert by_id[task_id]["pid"] != os.getpid(), "handlers run in worker processes"
    assert ack.read_text().strip(), "the ack holds a timestamp"
    assert not (root / "main" / "acks" / f"{custom_id}.ack").exists(), "no ack was asked for"
    assert os.listdir(root / "main" / "errors") == []

    # send(..., wait=True) returns once the ack is there
    waited = system.send("main", IPCMessageType.TASK, {"taskId": 124}, True, wait=True)
    assert (root / "main" / "acks" / f"{waited}.ack").exists()
    wait_until(lambda: waited in {line["id"] for line in _lines(out)}, 10, message="the waited task handled")
    _stop_and_check_no_processes(system)


def test_old_callback_interface_receives_task_and_command_payloads(tmp_path, systems):
    root = tmp_path / "ipc"
    out = tmp_path / "callback.jsonl"
    system = IPCSystem(_config(root))
    systems.append(system)
    system.set_callback(callback_recorder(out))
    system.start()
    _wait_ready(system)

    system.send("main", IPCMessageType.TASK, {"taskId": 7}, True)
    system.send("main", IPCMessageType.COMMAND, {"command": "refresh"})
    # an old writer's plain JSON file (not an envelope) reaches the callback too
    (root / "main" / "tmp" / "legacy.json").write_text(json.dumps({"legacy": True}))
    os.rename(root / "main" / "tmp" / "legacy.json", root / "main" / "messages" / "legacy.json")
    wait_until(lambda: len(_lines(out)) >= 3, 20, message="three callbacks")

    lines = _lines(out)
    assert sorted(json.dumps(line["data"], sort_keys=True) for line in lines) == sorted(
        json.dumps(d, sort_keys=True) for d in ({"taskId": 7}, {"command": "refresh"}, {"legacy": True}))
    assert all(line["group"] == "main" for line in lines)
    wait_until(lambda: not os.listdir(root / "main" / "messages") and not os.listdir(root / "main" / "processing"),
               10, message="empty messages/ and processing/")
    assert os.listdir(root / "main" / "errors") == []
    _stop_and_check_no_processes(system)


def test_a_registered_handler_takes_precedence_over_the_callback_for_its_type(tmp_path, systems):
    root = tmp_path / "ipc"
    out = tmp_path / "out.jsonl"
    system = IPCSystem(_config(root))
    systems.append(system)
    system.set_callback(callback_recorder(out))
    system.register_handler(IPCMessageType.TASK, message_recorder(out, "task"))
    system.start()
    _wait_ready(system)
    task_id = system.send("main", IPCMessageType.TASK, {"taskId": 1}, True, wait=True)
    system.send("main", IPCMessageType.COMMAND, {"command": "x"})
    wait_until(lambda: len(_lines(out)) >= 2, 20, message="both handled")
    lines = _lines(out)
    assert next(line for line in lines if line.get("handler") == "task")["id"] == task_id
    assert [line["data"] for line in lines if "data" in line] == [{"command": "x"}]
    _stop_and_check_no_processes(system)


def test_start_enhanced_ipc_and_get_ipc_system_share_one_system(tmp_path, monkeypatch):
    root = tmp_path / "ipc"
    config_path = tmp_path / "ipc.toml"
    config_path.write_text(
        f'[spool]\nroot = {json.dumps(str(root))}\nsettle_time = 0.3\nrescan_interval = 1.0\n'
        '[pool]\nworkers = 1\nshutdown_grace = 5.0\nkill_grace = 0.5\n'
        '[heartbeat]\ninterval = 0.25\nmiss_limit = 4\n'
        '[ack]\ntimeout = 5.0\nmax_retries = 1\nretry_delay = 0.1\n')
    monkeypatch.setenv("IPCPOOL_CONFIG", str(config_path))
    monkeypatch.delenv("IPCPOOL_ROOT", raising=False)
    monkeypatch.setattr(ipcpool.compat, "_SYSTEM", None)  # a fresh singleton for this test only

    out = tmp_path / "callback.jsonl"
    system = start_enhanced_ipc(callback_recorder(out))
    try:
        assert get_ipc_system() is system
        assert get_ipc_system() is get_ipc_system()
        assert system.config.spool.root == str(root)
        _wait_ready(system)
        ipc = get_ipc_system()
        message_id = ipc.send("main", IPCMessageType.TASK, {"taskId": 123}, True)
        wait_until((root / "main" / "acks" / f"{message_id}.ack").exists, 20, message="the ack")
        wait_until(lambda: _lines(out), 10, message="the callback")
        assert _lines(out)[0]["data"] == {"taskId": 123} and _lines(out)[0]["group"] == "main"
        _stop_and_check_no_processes(system)
    finally:
        system.stop()


def test_error_handler_hears_when_an_ack_never_comes(tmp_path):
    root = tmp_path / "ipc"
    system = IPCSystem(_config(root, ack={"timeout": 0.2, "max_retries": 1, "retry_delay": 0.05}))
    heard: list[Message] = []
    system.register_handler(IPCMessageType.ERROR, heard.append)
    try:
        # no supervisor runs: the ack never comes; the background waiter gives up and reports
        message_id = system.send("main", IPCMessageType.TASK, {"taskId": 9}, True)
        wait_until(lambda: heard, 20, message="the ERROR handler to be called")
        error = heard[0]
        assert error.type == IPCMessageType.ERROR == "error"
        assert error.group == "main"
        assert error.payload["recoverable"] is False
        assert error.payload["messageId"] == message_id
        assert error.payload["attempts"] == 1, "no supervisor: the first attempt's time-out ends the wait"
        assert "no ipcpool supervisor is running" in error.payload["error"]
        assert message_id in error.payload["error"]
        assert (root / "main" / "messages" / f"{message_id}.json").exists(), "the message is still queued"

        # the same with wait=True: AckTimeout raised here, and the handler hears it too
        with pytest.raises(AckTimeout) as info:
            system.send("main", IPCMessageType.TASK, {"taskId": 10}, True, wait=True)
        wait_until(lambda: len(heard) >= 2, 10, message="a second ERROR report")
        assert heard[1].payload["messageId"] == info.value.message_id
        assert heard[1].payload["recoverable"] is False
        assert len(heard) == 2, "one report per message"
        assert not system.running
    finally:
        system.stop()


_EPOLL_ENTRY = re.compile(r"^tfd:\s*(\d+)\b.*\bino:([0-9a-f]+)", re.MULTILINE)


def _stale_epoll_registrations(pid: int) -> list[str]:
    """Registrations in the process's epoll sets whose fd it no longer has open (or has reused for another file).

    Read from /proc/<pid>/fdinfo: each registration names its fd and the inode it
    was made for. epoll tracks the open file, not the number, so a registration
    outlives a close() while a forked child still holds the file; such a stale one
    reports HUP for ever and the loop that waits on it never sleeps.
    """
    stale: list[str] = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:  # closed meanwhile
            continue
        for target, inode in _EPOLL_ENTRY.findall(info):
            try:
                current = os.stat(f"/proc/{pid}/fd/{target}").st_ino
            except OSError:
                current = None
            if current != int(inode, 16):
                stale.append(f"epoll fd {fd}: fd {target} (inode {int(inode, 16)}, now {current})")
    return stale


def test_a_dead_forked_worker_leaves_the_supervisor_idle_not_spinning(tmp_path, systems):
    """Forked siblings inherit each other's pipes: the dead one's must leave the epoll set before closing."""
    log = tmp_path / "calls.jsonl"
    system = IPCSystem(_config(tmp_path / "ipc", pool={"workers": 3}))
    system.register_handler(IPCMessageType.TASK, message_recorder(log, "task"))
    systems.append(system)
    system.start()
    _wait_ready(system)
    supervisor = psutil.Process(system._process.pid)
    worker_pids = {w["pid"] for w in read_status(system.config.spool.root)["workers"]}
    victim = next(child for child in supervisor.children() if child.pid in worker_pids)  # not a helper process
    victim.kill()
    wait_until(lambda: victim.pid not in {c.pid for c in supervisor.children()}, message="the dead worker reaped")
    _wait_ready(system)
    # Not a CPU-time measurement (speed belongs to benchmarks): what makes the loop spin is a
    # registration left behind for a closed fd. Transient ones may exist mid-restart; a stale one stays.
    wait_until(lambda: not _stale_epoll_registrations(supervisor.pid), 20,
               message=f"no stale epoll registrations (have {_stale_epoll_registrations(supervisor.pid)})")
    # and the pool still works
    client = system.client
    message_id = client.send("main", "task", {"after": "restart"}, requires_ack=True)
    wait_until(lambda: client.is_acked("main", message_id), 20, message="a message handled after the restart")


# -- the README's example, as a user runs it ------------------------------------------------------------


def _readme_example() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## The original API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_run_verbatim_prints_received_every_time(tmp_path, env):
    """Reproduces the issue: stop() right after send() stopped the pool before it handled anything, the
    message sometimes never reached messages/, and no log line appeared."""
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    assert "start_enhanced_ipc" in script.read_text() and "ipc.stop()" in script.read_text()
    for run in range(10):
        cwd = tmp_path / f"run{run}"  # the default root, data/ipc, under the working directory
        cwd.mkdir()
        out = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Received: {'taskId': 123, 'prompt': 'Execute'}" in out.stdout, (run, out.stdout, out.stderr)
        for phrase in ("Enhanced IPC system started", "IPC message sent", "ACK received"):
            assert phrase in out.stderr, (run, phrase, out.stderr)
        queued = list((cwd / "data" / "ipc" / "main" / "messages").iterdir())
        assert queued == [], "stop() let the pool handle what was queued"


def test_send_has_published_when_it_returns(tmp_path):
    system = IPCSystem(_config(tmp_path / "ipc"))
    try:
        for requires_ack in (False, True):
            message_id = system.send("main", IPCMessageType.TASK, {"n": 1}, requires_ack)
            assert (tmp_path / "ipc" / "main" / "messages" / f"{message_id}.json").exists()
    finally:
        system.stop(timeout=0)


def test_a_second_system_on_one_root_raises_already_running_in_the_caller(tmp_path):
    from ipcpool import AlreadyRunning

    first = IPCSystem(_config(tmp_path / "ipc"))
    second = IPCSystem(_config(tmp_path / "ipc"))
    first.start()
    try:
        with pytest.raises(AlreadyRunning):
            second.start()
        assert not second.running
        assert first.running
    finally:
        first.stop()


def test_stop_drains_what_is_queued_within_the_grace(tmp_path):
    path = tmp_path / "handled.jsonl"
    system = IPCSystem(_config(tmp_path / "ipc", pool={"shutdown_grace": 30.0}))
    system.register_handler(IPCMessageType.TASK, message_recorder(path, "task"))
    system.start()
    ids = [system.send("main", IPCMessageType.TASK, {"n": i}) for i in range(50)]
    system.stop()
    assert sorted(line["id"] for line in _lines(path)) == sorted(ids)
