"""``[log] format = "json"``: every line the supervisor and its workers write is one JSON object."""

from __future__ import annotations

import json

import pytest
from conftest import backend_config, write_config

from ipcpool import Client, MessageFailed, MessageRejected


def test_every_line_is_json_with_the_message_fields(tmp_path, root, backend, supervisor_factory):
    config = backend_config(tmp_path, root, backend, log={"format": "json"})
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        handled = client.send_and_wait("main", "task", {"n": 1})
        with pytest.raises(MessageFailed):
            client.send_and_wait("main", "task", {"raise": "boom"}, message_id="fails-1")
        with pytest.raises(MessageRejected):
            client.send_and_wait("main", "nohandler", {}, message_id="rejected-1")
    assert sup.stop() == 0
    lines = [json.loads(line) for line in sup.log().splitlines() if line.strip()]  # each one parses
    assert all({"time", "level", "logger", "pid", "message"} <= set(line) for line in lines)
    by_outcome = {line["outcome"]: line for line in lines if "outcome" in line}
    ok = by_outcome["handled"]
    assert (ok["id"], ok["group"], ok["type"], ok["level"]) == (handled, "main", "task", "info")
    assert isinstance(ok["duration_ms"], float) and ok["message"].startswith("IPC message handled")
    assert (by_outcome["failed"]["id"], by_outcome["failed"]["level"]) == ("fails-1", "error")
    assert "duration_ms" in by_outcome["failed"]
    assert (by_outcome["invalid"]["id"], by_outcome["invalid"]["type"]) == ("rejected-1", "nohandler")
    assert any(line["message"].startswith("Enhanced IPC system started") for line in lines)


def test_an_unknown_log_format_is_a_config_error(tmp_path, root, env):
    from conftest import ipcpool_cli

    config = write_config(tmp_path / "c.toml", root, sections={"log": {"format": "xml"}})
    out = ipcpool_cli(env, tmp_path, "run", "--config", str(config))
    assert out.returncode == 2 and "[log] format" in out.stderr and "'json'" in out.stderr, out.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_what_a_handler_prints_is_logged_as_its_output_with_the_message(tmp_path, root, supervisor_factory, fmt):
    """A handler's print() used to land in the supervisor's output unmarked (and broke JSON logs)."""
    from conftest import wait_until

    config = write_config(tmp_path / "c.toml", root, sections={"log": {"format": fmt}})
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        said = client.send("main", "task", {"print": "hello from the handler"}, wait=True)
    wait_until(lambda: "(on stderr)" in sup.log(), 20, message="both lines logged")
    lines = [line for line in sup.log().splitlines() if "hello from the handler" in line]
    assert len(lines) == 2, lines
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert {r["logger"] for r in records} == {"ipcpool.handler"}
        assert {r["level"] for r in records} == {"info", "warning"}
        assert all(r["id"] == said and r["group"] == "main" and r["type"] == "task" for r in records)
    else:
        assert all(f"ipcpool.handler: handler output id={said} group=main type=task: hello from the handler" in line
                   for line in lines), lines
    assert sup.stop() == 0
