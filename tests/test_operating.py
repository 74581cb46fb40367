"""What operators see and type, through the real ``ipcpool`` executable: error records, ``errors``,
``status``, exit codes, payload sources, group checks, log lines and process titles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from conftest import IPCPOOL, REPO, ipcpool_cli, records, wait_until, write_config

from ipcpool import Client


def _drop(root: Path, name: str, data: bytes, group: str = "main") -> None:
    staged = root / group / "tmp" / f".{name}.part"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    os.rename(staged, root / group / "messages" / name)


def _records(root: Path, group: str = "main") -> dict[str, dict]:
    folder = root / group / "errors"
    return {r["originalName"]: r for r in (json.loads((folder / n).read_text()) for n in os.listdir(folder)
                                           if n.endswith(".error.json"))}


# -- error records and `ipcpool errors` --------------------------------------------------------------------


def test_every_record_carries_the_id_and_type_the_message_gives(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"max_message_bytes": 4096}})
    sup = supervisor_factory(config)
    cases = {
        "invalid.json": json.dumps({"id": "inv-1", "type": "task", "payload": {}, "requiresAck": "yes"}).encode(),
        "truncated.json": b'{"id": "cut-1", "type": "task", "payload": {"a": ',
        "big.json": json.dumps({"id": "big-1", "type": "task", "payload": "x" * 10000}).encode(),
        "big.msgpack": msgpack.packb({"id": "big-2", "type": "command", "payload": "y" * 10000}),
        "nohandler.json": json.dumps({"id": "nh-1", "type": "nohandler", "payload": {}}).encode(),
    }
    for name, body in cases.items():
        _drop(root, name, body)
    wait_until(lambda: len(_records(root)) == len(cases), 30, message="every case quarantined")
    found = {name: (r["id"], r["type"]) for name, r in _records(root).items()}
    assert found == {"invalid.json": ("inv-1", "task"), "truncated.json": ("cut-1", "task"),
                     "big.json": ("big-1", "task"), "big.msgpack": ("big-2", "command"),
                     "nohandler.json": ("nh-1", "nohandler")}
    listed = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(config))
    assert listed.returncode == 0 and "None" not in listed.stdout
    assert "  cut-1  task  " in listed.stdout
    sup.stop()


def test_errors_show_reads_like_a_report(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    failed = Client(root, "main").send("main", "task", {"raise": "boom"}, message_id="show-me-1234")
    wait_until(lambda: _records(root), 30, message="the failure quarantined")
    out = ipcpool_cli(env, tmp_path, "errors", "show", "--config", str(config), "show-me")  # a unique prefix
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "  id          show-me-1234" in text and "  type        task" in text
    assert "  reason      handler raised RuntimeError: boom" in text
    assert "  traceback:\n    Traceback (most recent call last):" in text, "the traceback as text, not a JSON string"
    assert '\\n' not in text.split("message:")[0]
    assert "tenacity" not in text and "concurrent/futures" not in text, "without the retry machinery's frames"
    assert 'raise RuntimeError(str(payload["raise"]))' in text, "down to the handler's own line"
    assert '"raise": "boom"' in text.split("message:")[1]
    assert failed in text
    sup.stop()


def test_errors_show_names_every_record_of_an_id_and_refuses_a_shared_prefix(tmp_path, root, env,
                                                                             supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    body = json.dumps({"id": "twice-1", "type": "nohandler", "payload": {}}).encode()
    _drop(root, "first.json", body)
    _drop(root, "second.json", body)
    _drop(root, "other.json", json.dumps({"id": "twice-2", "type": "nohandler", "payload": {}}).encode())
    wait_until(lambda: len(_records(root)) == 3, 30, message="three records")
    out = ipcpool_cli(env, tmp_path, "errors", "show", "--config", str(config), "twice-1")
    assert out.returncode == 0
    assert "2 records share id twice-1" in out.stdout
    assert "first.json" in out.stdout and "second.json" in out.stdout
    ambiguous = ipcpool_cli(env, tmp_path, "errors", "show", "--config", str(config), "twice")
    assert ambiguous.returncode == 1
    assert "is the start of 2 ids: twice-1, twice-2" in ambiguous.stderr
    sup.stop()


def test_errors_purge_dry_run_deletes_nothing(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    _drop(root, "gone.json", json.dumps({"id": "gone-1", "type": "nohandler", "payload": {}}).encode())
    wait_until(lambda: _records(root), 30, message="quarantined")
    before = sorted(os.listdir(root / "main" / "errors"))
    out = ipcpool_cli(env, tmp_path, "errors", "purge", "--config", str(config), "--all", "--dry-run")
    assert out.returncode == 0
    assert "would purge 1 quarantined message(s); nothing was deleted" in out.stdout and "gone-1" in out.stdout
    assert sorted(os.listdir(root / "main" / "errors")) == before
    assert ipcpool_cli(env, tmp_path, "errors", "purge", "--config", str(config), "--all").returncode == 0
    assert [n for n in os.listdir(root / "main" / "errors") if n != "retried"] == []
    sup.stop()


def test_retried_records_get_the_spools_mode_and_are_pruned(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"mode": "shared",
                                                                         "retried_retention": 60.0}})
    sup = supervisor_factory(config)
    _drop(root, "again.json", json.dumps({"id": "again-1", "type": "nohandler", "payload": {}}).encode())
    wait_until(lambda: _records(root), 30, message="quarantined")
    assert ipcpool_cli(env, tmp_path, "errors", "retry", "--config", str(config), "again-1").returncode == 0
    retried = root / "main" / "errors" / "retried"
    assert oct(retried.stat().st_mode & 0o7777) == oct(0o2750), "the spool's mode for errors/, not 0700"
    sup.stop()
    old = retried / "1-old.json.error.json"
    old.write_text("{}")
    an_hour_ago = time.time() - 3600  # past the 60 s retention, within the 7-day default
    os.utime(old, (an_hour_ago, an_hour_ago))
    fresh = [n for n in os.listdir(retried) if n != old.name]
    sup = supervisor_factory(config)
    wait_until(lambda: not old.exists(), 30, message="the old retried record pruned at start")
    assert all((retried / n).exists() for n in fresh), "a record inside the retention is kept"
    sup.stop()


# -- `ipcpool status` -------------------------------------------------------------------------------------


def test_status_shows_held_and_running_apart_and_the_running_message_by_id(tmp_path, root, env,
                                                                          supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "prefetch": 4}})
    sup = supervisor_factory(config)
    client = Client(root, "main")
    ids = [client.send("main", "task", {"sleep": 0.4, "n": i}) for i in range(12)]

    def snapshot() -> dict | None:
        out = ipcpool_cli(env, tmp_path, "status", "--config", str(config), "--json")
        status = json.loads(out.stdout)
        worker = status["workers"][0] if status.get("workers") else {}
        current = worker.get("currentMessage") or {}
        if worker.get("running") == 1 and current.get("type") == "task" and status["groups"]["main"]["queued"]:
            return status
        return None

    status = wait_until(snapshot, 30, message="a snapshot with one running and a backlog")
    worker = status["workers"][0]
    assert worker["currentMessage"]["id"] in ids
    assert 0 <= worker["held"] <= 3, "prefetch 4: one running, the rest held"
    group = status["groups"]["main"]
    assert group["running"] == 1 and group["held"] == worker["held"]
    assert group["queued"] >= 12 - 4 - len(records(tmp_path)), "the backlog is counted, not hidden in a worker"
    # A later snapshot than the JSON one above: its running message may have just changed, and until the
    # worker's heartbeat tells that one's type the table shows its id alone. Wait for one that does.
    def table_telling_the_type() -> str | None:
        out = ipcpool_cli(env, tmp_path, "status", "--config", str(config)).stdout
        return out if " task " in out else None

    table = wait_until(table_telling_the_type, 30, message="a table whose running message's type is told")
    assert "snapshot: " in table and "s old" in table
    assert "HELD" in table and "RUNNING" in table and " task " in table
    sup.stop()


def test_status_with_no_supervisor_counts_the_folders(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root)
    with Client(root, "main") as client:
        for i in range(3):
            client.send("main", "task", {"n": i})
    (root / "main" / "errors").mkdir(exist_ok=True)
    (root / "main" / "errors" / "1-x.json.error.json").write_text("{}")
    out = ipcpool_cli(env, tmp_path, "status", "--config", str(config))
    assert out.returncode == 1
    assert "supervisor: DOWN" in out.stdout
    line = next(line for line in out.stdout.splitlines() if line.startswith("main "))
    assert line.split() == ["main", "3", "0", "1", "0"]
    as_json = json.loads(ipcpool_cli(env, tmp_path, "status", "--config", str(config), "--json").stdout)
    assert as_json["folders"]["main"] == {"queued": 3, "processing": 0, "errors": 1, "delayed": 0}
    assert as_json["healthy"] is False


@pytest.mark.parametrize("command", ["status", "errors list", "errors show"])
def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path, root, env, command):
    config = write_config(tmp_path / "c.toml", root)
    if command == "status":
        for i in range(3000):  # more than a pipe holds
            (root / f"g{i}").mkdir(parents=True)
    else:
        errors = root / "main" / "errors"
        errors.mkdir(parents=True)
        for i in range(3000 if command == "errors list" else 1):
            (errors / f"{i}-m{i}.json").write_text("x" * (200_000 if command == "errors show" else 10))
            (errors / f"{i}-m{i}.json.error.json").write_text(json.dumps({"id": f"m{i}", "reason": "r" * 50}))
    args = command.split() + ["--config", str(config)] + (["m0"] if command == "errors show" else [])
    proc = subprocess.Popen([str(IPCPOOL), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline()  # like `| head -1`: one line, then the reader goes away
    proc.stdout.close()
    stderr = proc.stderr.read()
    code = proc.wait(60)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


# -- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["send", "--group", "bad name", "--type", "task"],
    ["send", "--group", "main", "--type", "bad type!"],
    ["request", "--group", "../etc", "--type", "task"],
    ["run", "--workers", "0"],
    ["run", "--workers", "many"],
])
def test_a_bad_argument_exits_2(tmp_path, root, env, args):
    config = write_config(tmp_path / "c.toml", root)
    out = ipcpool_cli(env, tmp_path, *args[:1], "--config", str(config), *args[1:])
    assert out.returncode == 2, out.stderr
    assert "invalid" in out.stderr or "must be a positive integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_version(tmp_path, env):
    from ipcpool import __version__

    out = ipcpool_cli(env, tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"ipcpool {__version__}"


@pytest.mark.parametrize("source", ["-", "@"])
def test_a_payload_bigger_than_the_argument_list_from_stdin_or_a_file(tmp_path, root, env, supervisor_factory,
                                                                      source):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"max_message_bytes": 2_000_000}})
    sup = supervisor_factory(config)
    payload = json.dumps({"blob": "z" * 1_200_000})
    if source == "-":
        out = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task", "--ack",
                          "--payload", "-", input=payload)
    else:
        (tmp_path / "payload.json").write_text(payload)
        out = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task", "--ack",
                          "--payload", f"@{tmp_path / 'payload.json'}")
    assert out.returncode == 0, out.stderr
    (record,) = records(tmp_path)
    assert record["id"] == out.stdout.strip() and len(record["payload"]["blob"]) == 1_200_000
    missing = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task",
                          "--payload", "@/nonexistent/payload.json")
    assert missing.returncode == 2 and "cannot read /nonexistent/payload.json" in missing.stderr
    sup.stop()


def test_run_workers_overrides_the_config(tmp_path, root, supervisor_factory, env):
    config = write_config(tmp_path / "c.toml", root)
    proc = subprocess.Popen([str(IPCPOOL), "run", "--config", str(config), "--workers", "3"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: (s := _status(root)) and len(s.get("workers", [])) == 3
                   and s.get("expectedWorkers") == 3, 30, message="three workers")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _status(root: Path) -> dict | None:
    try:
        return json.loads((root / ".ipcpool" / "status.json").read_text())
    except (OSError, ValueError):
        return None


def test_a_group_not_in_the_config_is_warned_of_or_refused(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    out = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "mian", "-t", "task")
    assert out.returncode == 0
    assert "group 'mian' is not in [spool] groups" in out.stderr
    strict = write_config(tmp_path / "strict.toml", tmp_path / "strict", sections={"spool": {"strict_groups": True}})
    refused = ipcpool_cli(env, tmp_path, "send", "--config", str(strict), "-g", "mian", "-t", "task")
    assert refused.returncode == 2
    assert "group 'mian' is not in [spool] groups" in refused.stderr and "strict_groups" in refused.stderr
    assert not (tmp_path / "strict" / "mian").exists(), "no queue created that nobody serves"
    # the supervisor under strict_groups serves only the configured groups
    (tmp_path / "strict" / "stray" / "messages").mkdir(parents=True)
    sup = supervisor_factory(strict)
    wait_until(lambda: "ignoring group folder stray" in sup.log(), 30, message="the stray folder ignored")
    sup.stop()


def test_the_client_warns_of_a_group_not_in_the_config_once(tmp_path, root, caplog):
    config = write_config(tmp_path / "c.toml", root)
    with Client.from_config(config) as client:
        client.send("mian", "task", {})
        client.send("mian", "task", {})
    warnings = [r for r in caplog.records if "group 'mian' is not in [spool] groups" in r.getMessage()]
    assert len(warnings) == 1


def test_check_warns_of_a_config_with_no_handlers(tmp_path, root, env):
    config = tmp_path / "empty.toml"
    config.write_text(f'[spool]\nroot = "{root}"\n')
    out = ipcpool_cli(env, tmp_path, "check", "--config", str(config))
    assert out.returncode == 0
    assert "warning: [handlers] is empty" in out.stderr


# -- logs and process titles ---------------------------------------------------------------------------


@pytest.mark.parametrize("on", [True, False])
def test_one_info_line_per_finished_message(tmp_path, root, supervisor_factory, on):
    config = write_config(tmp_path / "c.toml", root, sections={"log": {"messages": on}})
    sup = supervisor_factory(config)
    message_id = Client(root, "main").send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{message_id}.ack").exists(), 30, message="handled")
    sup.stop()
    lines = [line for line in sup.log().splitlines() if "IPC message handled" in line]
    if on:
        (line,) = lines
        assert f"id={message_id} group=main type=task in " in line and line.endswith(" ms")
    else:
        assert lines == []


def test_timeout_lines_name_the_message_and_a_kill_of_ours_is_not_out_of_memory(tmp_path, root,
                                                                               supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"handler_timeout": 1.0, "max_deliveries": 1}})
    sup = supervisor_factory(config)
    slow = Client(root, "main").send("main", "task", {"sleep": 60}, message_id="slow-one")
    wait_until(lambda: "Poison message moved to errors/" in sup.log(), 60, message="timed out, then poison")
    log = sup.log()
    kill = next(line for line in log.splitlines() if "killing worker" in line)
    assert f"id={slow} type=task" in kill and "handler_timeout 1s" in kill
    died = next(line for line in log.splitlines() if "worker died" in line)
    assert "killed after handler_timeout (1s)" in died and "perhaps out of memory" not in died
    poison = next(line for line in log.splitlines() if "Poison message" in line)
    assert f"id={slow} type=task" in poison
    sup.stop()


def test_a_boot_failure_prints_its_traceback_once_and_nothing_boots_after_the_halt(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "broken_import:handle"},
                          sections={"pool": {"workers": 2, "max_boot_failures": 3}})
    out = ipcpool_cli(env, tmp_path, "run", "--config", str(config))
    assert out.returncode == 3
    log = out.stderr
    assert log.count("Traceback (most recent call last)") == 1
    assert log.count("worker failed to boot") == 3
    after = log.split("supervisor halting")[1]
    assert "ipcpool.pool.worker" not in after, "no worker was booting when the pool halted"
    if os.geteuid() == 0:
        assert log.count("running as root") == 1, "one line, once (the how-to is in the README)"


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_process_titles_say_who_is_who(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    assert _cmdline(sup.pid) == f"ipcpool: supervisor {root}"
    children = {p.pid: _cmdline(p.pid) for p in sup.descendants()}
    assert "ipcpool: forkserver" in children.values()
    workers = wait_until(lambda: len(p := sup.worker_pids()) == 2 and p, message="two workers")
    wait_until(lambda: {_cmdline(pid) for pid in workers} == {"ipcpool: worker 0 idle", "ipcpool: worker 1 idle"},
               30, message="idle workers named by slot")
    busy = Client(root, "main").send("main", "task", {"sleep": 5})
    wait_until(lambda: any(_cmdline(pid).endswith(f" task {busy}") for pid in workers), 30,
               message="the busy worker titled with the message it runs")
    sup.stop()


# -- growth, threads, permissions -----------------------------------------------------------------------------


def test_the_history_of_a_message_an_operator_removed_is_dropped(tmp_path, root, supervisor_factory):
    import hashlib

    config = write_config(tmp_path / "c.toml", root)
    records_dir = root / ".ipcpool" / "deliveries" / "main"
    records_dir.mkdir(parents=True)
    ghost = records_dir / f"{hashlib.sha1(b'ghost.json').hexdigest()}.json"
    ghost.write_text(json.dumps({"name": "ghost.json", "history": [{"delivery": 1, "ended": "killed"}]}))
    sup = supervisor_factory(config)
    wait_until(lambda: not ghost.exists(), 30, message="the record of a message that is nowhere dropped")
    sup.stop()


def test_one_client_shared_by_threads_does_not_serialise_their_waits(tmp_path, root, supervisor_factory):
    import threading

    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    done: dict[str, str] = {}
    with Client(root, "main") as client:
        def wait(name: str, payload: dict) -> None:
            done[name] = client.send_and_wait("main", "task", payload)

        slow = threading.Thread(target=wait, args=("slow", {"wait_file": str(gate)}))
        slow.start()
        wait_until(lambda: records(tmp_path), 30, message="the slow one started")
        fast = threading.Thread(target=wait, args=("fast", {"n": 1}))
        fast.start()
        wait_until(lambda: "fast" in done, 30, message="the fast wait answered while the slow one waits")
        assert "slow" not in done
        gate.touch()
        slow.join(30)
        fast.join(30)
    assert set(done) == {"slow", "fast"}
    sup.stop()


def test_waits_leave_no_watches_and_async_waits_that_timed_out_are_forgotten(tmp_path, root):
    import asyncio

    from ipcpool import AsyncClient
    from ipcpool.config import AckConfig

    with Client(root, "main", ack=AckConfig(timeout=0.05, max_retries=0)) as client:
        for i in range(20):
            client.wait_for_ack("main", f"never-{i}", 0.01)
        waiter = client.outbox.waiter
        assert waiter._dir_wds == {}
        fdinfo = Path(f"/proc/self/fdinfo/{waiter.fileno()}").read_text()
        assert "inotify wd:" not in fdinfo, "every watch removed after its wait"

    async def scenario() -> AsyncClient:
        async_client = AsyncClient(Client(root, "main"))
        outbox = async_client.client.outbox
        await asyncio.gather(*(outbox.async_wait_answer("main", f"x{i}", 0.05, lambda _body: True)
                               for i in range(50)))
        return async_client

    async_client = asyncio.run(scenario())
    assert async_client.client.outbox._wakeups == set()
    async_client.close()


def test_compat_acked_sends_share_one_thread_and_one_inotify_instance(tmp_path):
    import threading

    from ipcpool.compat import IPCSystem
    from ipcpool.config import parse_config

    def inotify_fds() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
            except OSError:  # closed meanwhile (the listing's own fd, for one)
                pass
        return count

    system = IPCSystem(parse_config({"spool": {"root": str(tmp_path / "ipc")}, "ack": {"timeout": 60.0}}))
    threads, watchers = threading.active_count(), inotify_fds()
    try:
        for i in range(50):
            system.send("main", "task", {"n": i}, True)
        assert threading.active_count() <= threads + 1
        assert inotify_fds() <= watchers + 1
    finally:
        system.stop(timeout=0)


def test_shared_mode_status_is_not_group_writable_and_old_folders_get_their_modes(tmp_path, root,
                                                                                 supervisor_factory):
    messages = root / "main" / "messages"
    messages.mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(messages, 0o755)  # as a writer's `mkdir -p` leaves them
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"mode": "shared"}})
    sup = supervisor_factory(config)
    status = root / ".ipcpool" / "status.json"
    wait_until(status.exists, 30, message="status.json")
    assert status.stat().st_mode & 0o777 == 0o640, "writers may read the verdict, never forge it"
    assert messages.stat().st_mode & 0o7777 == 0o3770
    assert root.stat().st_mode & 0o7777 == 0o2750
    # The records that steer the supervisor (the ledger's clock, who its workers are): its own alone.
    steering = [root / ".ipcpool" / "clock.json", root / ".ipcpool" / "workers.json"]
    wait_until(lambda: all(p.exists() for p in steering), 30, message="clock.json and workers.json")
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in steering} == {"clock.json": "0o600",
                                                                          "workers.json": "0o600"}
    sup.stop()


def test_a_spool_folder_another_user_owns_is_refused_with_the_reason(tmp_path, root, env, supervisor_factory):
    """Its group is not served (the rest is): health says which folder, and the chown that fixes it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    messages = root / "main" / "messages"
    messages.mkdir(parents=True)
    os.chown(messages, 65534, 65534)
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    out = wait_until(lambda: (h := ipcpool_cli(env, tmp_path, "health", "--config", str(config))).returncode == 1
                     and "not served" in h.stdout and h, 30, message="health names the folder")
    assert f"{messages} is owned by uid 65534" in out.stdout and "chown" in out.stdout
    assert sup.stop() == 0


def test_the_readme_stands_alone():
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme, "a clone has no ../shared: what readers need is in the repo"
    assert (REPO / "docs" / "design.md").exists()
