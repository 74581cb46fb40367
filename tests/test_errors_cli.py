"""The CLI against real spools: ``errors list|show|retry|purge`` on messages a running pool quarantined,
and the ``send``/``request`` sub-commands' results and failure reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import files, records, wait_until, write_config

from ipcpool import Client

ERROR_SUFFIX = ".error.json"


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipcpool", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _error_records(root: Path, group: str = "main") -> list[str]:
    return [n for n in files(root, group, "errors") if n.endswith(ERROR_SUFFIX)]


def _quarantined(root: Path, group: str, message_id: str) -> list[str]:
    """Error-record files of ``message_id`` in ``<group>/errors/``."""
    return [n for n in _error_records(root, group) if n[: -len(ERROR_SUFFIX)].split("-", 1)[1].startswith(message_id)]


def _wait_quarantined(root: Path, group: str, message_id: str, count: int = 1) -> list[str]:
    return wait_until(lambda: len(found := _quarantined(root, group, message_id)) >= count and found, 30,
                      message=f"{group}/{message_id} quarantined")


def _list_json(env: dict[str, str], config: Path, *extra: str) -> list[dict[str, Any]]:
    out = cli(env, "errors", "list", "--config", str(config), "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _config_a(tmp_path: Path, root: Path, **kwargs: Any) -> Path:
    """Only ``task`` has a handler: any other type is quarantined as unroutable."""
    return write_config(tmp_path / "a.toml", root, handlers={"task": "recorder:record"}, **kwargs)


def _config_b(tmp_path: Path, root: Path, **kwargs: Any) -> Path:
    """The same root, now with a handler for the ``orphan`` type."""
    return write_config(tmp_path / "b.toml", root, handlers={"task": "recorder:record", "orphan": "recorder:record"},
                        **kwargs)


# -- errors list -----------------------------------------------------------------------------------------


def test_errors_list_shows_every_field_and_filters_by_group(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root, groups=["main", "other"])
    supervisor_factory(config)
    client = Client(root, "main")
    boom = client.send("main", "task", {"raise": "boom"})
    orphan = client.send("other", "orphan", {"n": 1})
    _wait_quarantined(root, "main", boom)
    _wait_quarantined(root, "other", orphan)

    entries = _list_json(env, config)
    by_id = {e["id"]: e for e in entries}
    assert set(by_id) == {boom, orphan}
    for entry in entries:
        assert {"time", "group", "id", "type", "reason", "attempts"} <= set(entry)
        assert entry["time"]
    assert by_id[boom]["group"] == "main"
    assert by_id[boom]["type"] == "task"
    assert "boom" in by_id[boom]["reason"]
    assert by_id[boom]["attempts"] == 2  # [retry] attempts = 2 in the test config
    assert by_id[orphan]["group"] == "other"
    assert by_id[orphan]["type"] == "orphan"
    assert "no handler" in by_id[orphan]["reason"]
    assert by_id[orphan]["attempts"] == 0

    assert [e["id"] for e in _list_json(env, config, "--group", "other")] == [orphan]
    assert [e["id"] for e in _list_json(env, config, "--group", "main")] == [boom]

    text = cli(env, "errors", "list", "--config", str(config))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        entry = by_id[next(i for i in by_id if i in line)]
        for field in ("time", "group", "id", "type", "reason"):
            assert str(entry[field]) in line, f"{field} missing from {line!r}"
        assert f"attempts={entry['attempts']}" in line
    assert "2 quarantined" in text.stderr

    only_other = cli(env, "errors", "list", "--config", str(config), "--group", "other")
    assert only_other.returncode == 0, only_other.stderr
    assert orphan in only_other.stdout and boom not in only_other.stdout


def test_errors_list_with_nothing_quarantined(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    supervisor_factory(config)
    assert _list_json(env, config) == []
    text = cli(env, "errors", "list", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == ""
    assert "0 quarantined" in text.stderr


# -- errors show -----------------------------------------------------------------------------------------


def test_errors_show_prints_the_message_and_its_error_record(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    supervisor_factory(config)
    boom = Client(root, "main").send("main", "task", {"raise": "boom", "tag": "shown"})
    [record_file] = _wait_quarantined(root, "main", boom)

    out = cli(env, "errors", "show", "--config", str(config), boom, "--json")
    assert out.returncode == 0, out.stderr
    (shown,) = json.loads(out.stdout)
    assert shown["group"] == "main"
    assert shown["file"] == record_file[: -len(ERROR_SUFFIX)]
    assert shown["error"]["id"] == boom
    assert "boom" in shown["error"]["reason"]
    assert shown["error"]["attempts"] == 2
    message = json.loads(shown["message"])
    assert message["id"] == boom
    assert message["payload"] == {"raise": "boom", "tag": "shown"}

    by_file = cli(env, "errors", "show", "--config", str(config), shown["file"], "--json")
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout)[0]["error"]["id"] == boom

    missing = cli(env, "errors", "show", "--config", str(config), "no-such-id")
    assert missing.returncode == 1
    assert "no-such-id" in missing.stderr


# -- errors retry -----------------------------------------------------------------------------------------


def test_errors_retry_moves_the_message_back_and_keeps_the_record(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    sup = supervisor_factory(config)
    boom = Client(root, "main").send("main", "task", {"raise": "boom"})
    [record_file] = _wait_quarantined(root, "main", boom)
    error_file = record_file[: -len(ERROR_SUFFIX)]
    assert sup.stop() == 0

    out = cli(env, "errors", "retry", "--config", str(config), boom)
    assert out.returncode == 0, out.stderr
    assert f"main/{boom}.json" in out.stdout
    assert files(root, "main", "messages") == [f"{boom}.json"]
    assert json.loads((root / "main" / "messages" / f"{boom}.json").read_bytes())["id"] == boom
    assert error_file not in files(root, "main", "errors")
    assert _error_records(root) == []
    kept = root / "main" / "errors" / "retried" / record_file
    assert kept.exists(), "the error record is kept in errors/retried/"
    assert json.loads(kept.read_text())["id"] == boom
    assert _list_json(env, config) == []


def test_errors_retry_takes_an_id_prefix_as_errors_show_does(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        first = client.send("main", "task", {"raise": "boom"}, message_id="aaaa-1111")
        second = client.send("main", "task", {"raise": "boom"}, message_id="aaaa-2222")
    for message_id in (first, second):
        _wait_quarantined(root, "main", message_id)
    assert sup.stop() == 0
    ambiguous = cli(env, "errors", "retry", "--config", str(config), "aaaa")
    assert ambiguous.returncode == 1 and "is the start of 2 ids" in ambiguous.stderr
    assert files(root, "main", "messages") == []
    unknown = cli(env, "errors", "retry", "--config", str(config), "zzzz")
    assert unknown.returncode == 1 and "not in errors/: zzzz" in unknown.stderr
    out = cli(env, "errors", "retry", "--config", str(config), "aaaa-2")
    assert out.returncode == 0, out.stderr
    assert files(root, "main", "messages") == ["aaaa-2222.json"]


def test_errors_retry_while_running_redelivers_a_still_failing_message(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    supervisor_factory(config)
    boom = Client(root, "main").send("main", "task", {"raise": "boom"})
    [first] = _wait_quarantined(root, "main", boom)
    wait_until(lambda: len(records(tmp_path)) == 2, 20, message="two handler attempts")

    out = cli(env, "errors", "retry", "--config", str(config), boom)
    assert out.returncode == 0, out.stderr
    assert (root / "main" / "errors" / "retried" / first).exists()
    # the running pool picks it up like any new file; the handler still fails, so it is quarantined anew
    wait_until(lambda: [n for n in _quarantined(root, "main", boom) if n != first], 30,
               message="the retried message quarantined again")
    assert len(records(tmp_path)) == 4, "the retried message got a fresh set of handler attempts"
    assert all(r["delivery"] == 1 for r in records(tmp_path)), "retry resets the delivery count"
    assert first not in files(root, "main", "errors")
    assert [e["id"] for e in _list_json(env, config)] == [boom]


def test_errors_retry_under_a_config_whose_handler_now_succeeds(tmp_path, root, env, supervisor_factory):
    config_a, config_b = _config_a(tmp_path, root), _config_b(tmp_path, root)
    sup_a = supervisor_factory(config_a)
    client = Client(root, "main")
    orphan = client.send("main", "orphan", {"n": 1}, requires_ack=True)
    [record_file] = _wait_quarantined(root, "main", orphan)
    assert records(tmp_path) == []
    assert sup_a.stop() == 0

    supervisor_factory(config_b)
    out = cli(env, "errors", "retry", "--config", str(config_b), orphan)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: (root / "main" / "acks" / f"{orphan}.ack").exists(), 30, message="the retried message acked")
    wait_until(lambda: not files(root, "main", "messages") and not files(root, "main", "processing"), 20,
               message="messages/ and processing/ empty")
    handled = records(tmp_path)
    assert [(r["id"], r["type"]) for r in handled] == [(orphan, "orphan")]
    assert _error_records(root) == []
    assert (root / "main" / "errors" / "retried" / record_file).exists()
    assert _list_json(env, config_b) == []


def test_errors_retry_all(tmp_path, root, env, supervisor_factory):
    config_a, config_b = _config_a(tmp_path, root, groups=["main", "other"]), _config_b(tmp_path, root,
                                                                                          groups=["main", "other"])
    sup_a = supervisor_factory(config_a)
    client = Client(root, "main")
    ids = [client.send("main", "orphan", {"n": i}, requires_ack=True) for i in range(3)]
    ids.append(client.send("other", "orphan", {"n": 3}, requires_ack=True))
    wait_until(lambda: len(_error_records(root, "main")) == 3 and len(_error_records(root, "other")) == 1, 30,
               message="four quarantined messages")
    assert sup_a.stop() == 0

    supervisor_factory(config_b)
    out = cli(env, "errors", "retry", "--config", str(config_b), "--all")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 4
    wait_until(lambda: all((root / g / "acks" / f"{i}.ack").exists() for g, i in
                           [("main", i) for i in ids[:3]] + [("other", ids[3])]), 30, message="every retried ack")
    wait_until(lambda: all(not files(root, g, s) for g in ("main", "other") for s in ("messages", "processing")), 20,
               message="queues empty")
    assert sorted(r["id"] for r in records(tmp_path)) == sorted(ids)
    assert _list_json(env, config_b) == []
    assert len(files(root, "main", "errors/retried")) == 3
    assert len(files(root, "other", "errors/retried")) == 1

    # nothing left: --all still succeeds; naming nothing is a usage error
    again = cli(env, "errors", "retry", "--config", str(config_b), "--all")
    assert again.returncode == 0, again.stderr
    bare = cli(env, "errors", "retry", "--config", str(config_b))
    assert bare.returncode == 2
    unknown = cli(env, "errors", "retry", "--config", str(config_b), "no-such-id")
    assert unknown.returncode == 1
    assert "no-such-id" in unknown.stderr


# -- errors purge -----------------------------------------------------------------------------------------


def _age(root: Path, group: str, record_file: str, seconds: float) -> str:
    """Make one quarantined pair look ``seconds`` old: its age is the epoch-ms prefix of its name."""
    stem = record_file[: -len(ERROR_SUFFIX)]
    old_stem = f"{int((time.time() - seconds) * 1000)}-{stem.split('-', 1)[1]}"
    errors = root / group / "errors"
    os.rename(errors / stem, errors / old_stem)
    os.rename(errors / record_file, errors / (old_stem + ERROR_SUFFIX))
    return old_stem


def test_errors_purge_older_than_keeps_fresh_ones_and_all_removes_all(tmp_path, root, env, supervisor_factory):
    config = _config_a(tmp_path, root)
    supervisor_factory(config)
    client = Client(root, "main")
    ids = [client.send("main", "orphan", {"n": i}) for i in range(3)]
    wait_until(lambda: len(_error_records(root)) == 3, 30, message="three quarantined messages")
    old_id = ids[0]
    [old_record] = _quarantined(root, "main", old_id)
    old_stem = _age(root, "main", old_record, 2 * 3600)

    out = cli(env, "errors", "purge", "--config", str(config), "--older-than", "1h")
    assert out.returncode == 0, out.stderr
    assert "purged 1" in out.stdout
    assert old_stem not in files(root, "main", "errors")
    assert old_stem + ERROR_SUFFIX not in files(root, "main", "errors")
    assert sorted(e["id"] for e in _list_json(env, config)) == sorted(ids[1:]), "fresh ones are kept"

    again = cli(env, "errors", "purge", "--config", str(config), "--older-than", "1h")
    assert again.returncode == 0, again.stderr
    assert "purged 0" in again.stdout
    assert len(_error_records(root)) == 2

    everything = cli(env, "errors", "purge", "--config", str(config), "--all")
    assert everything.returncode == 0, everything.stderr
    assert "purged 2" in everything.stdout
    assert [n for n in files(root, "main", "errors") if n != "retried"] == []
    assert _list_json(env, config) == []


def test_errors_purge_needs_a_selection_and_a_valid_duration(tmp_path, root, env):
    config = _config_a(tmp_path, root)
    Client(root, "main")
    bare = cli(env, "errors", "purge", "--config", str(config))
    assert bare.returncode == 2
    assert "--all" in bare.stderr
    bad = cli(env, "errors", "purge", "--config", str(config), "--older-than", "soon")
    assert bad.returncode == 2
    assert "invalid duration" in bad.stderr


# -- send and request ----------------------------------------------------------------------------------------


def test_cli_request_prints_the_result(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    out = cli(env, "request", "--config", str(config), "--group", "main", "--type", "task",
              "--payload", '{"result": 5}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
    assert files(root, "main", "responses") == []


def test_cli_request_reports_a_handler_error(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    out = cli(env, "request", "--config", str(config), "--group", "main", "--type", "task",
              "--payload", '{"raise": "boom"}', "--timeout", "20")
    assert out.returncode == 1
    assert out.stdout == ""
    reason = out.stderr.strip().splitlines()[-1]
    assert reason.startswith("ipcpool: ") and "boom" in reason
    assert "Traceback" not in out.stderr


def test_cli_send_refuses_when_the_queue_is_full(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"max_queued": 2}})
    for i in range(2):
        out = cli(env, "send", "--config", str(config), "--group", "main", "--type", "task", "--payload",
                  json.dumps({"n": i}))
        assert out.returncode == 0, out.stderr
    assert len(files(root, "main", "messages")) == 2

    full = cli(env, "send", "--config", str(config), "--group", "main", "--type", "task", "--payload", '{"n": 2}')
    assert full.returncode == 1
    assert full.stdout == ""
    assert "Traceback" not in full.stderr
    reasons = [line for line in full.stderr.splitlines() if "queue full" in line]
    assert len(reasons) == 1, full.stderr
    assert full.stderr.strip().splitlines()[-1] == reasons[0]
    assert len(files(root, "main", "messages")) == 2
    assert files(root, "main", "tmp") == []


def test_cli_send_ack_times_out_against_a_stopped_pool(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, sections={"ack": {"max_retries": 1, "retry_delay": 0.05}})
    out = cli(env, "send", "--config", str(config), "--group", "main", "--type", "task", "--ack",
              "--timeout", "0.3")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    reasons = [line for line in out.stderr.splitlines() if line.startswith("ipcpool: ")]
    assert len(reasons) == 1, out.stderr
    assert "no ipcpool supervisor is running" in reasons[0], "no supervisor: said at once"
    assert out.stderr.strip().splitlines()[-1] == reasons[0]
    queued = files(root, "main", "messages")
    assert len(queued) == 1, "re-sends keep one copy"
    assert queued[0].split(".")[0] in reasons[0]


def test_errors_commands_never_reach_outside_the_root_through_a_group(tmp_path, root, env):
    """A ``<group>/errors/<name>`` whose group is a path (``../..``) is refused, exit 2, and what lies outside
    the root (shaped like an errors/ folder) is neither shown, nor moved, nor removed."""
    config = _config_a(tmp_path, root)
    (root / "main" / "errors").mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside" / "errors"
    outside.mkdir(parents=True)
    name = "1700000000000-secret.json"
    (outside / name).write_text('{"id": "secret", "type": "task", "payload": {}}')
    (outside / f"{name}{ERROR_SUFFIX}").write_text(json.dumps({"id": "secret", "reason": "planted",
                                                                "inbox": "messages", "originalName": "x.json"}))
    escape = f"{os.path.relpath(tmp_path / 'outside', root)}/errors/{name}"
    for action in ("show", "retry"):
        out = cli(env, "errors", action, escape, "--config", str(config))
        assert out.returncode == 2 and "invalid group name" in out.stderr, (action, out.stdout, out.stderr)
        assert "planted" not in out.stdout
    out = cli(env, "errors", "list", "--group", "../outside", "--config", str(config))
    assert out.returncode == 2 and "invalid group name" in out.stderr, out.stderr
    assert sorted(os.listdir(outside)) == [name, f"{name}{ERROR_SUFFIX}"], "nothing outside the root touched"
