"""README promises about what a real worker does with a message: dedupe, routing, handlers.

Each test runs a real ``ipcpool run`` and checks one promise from the outside
(files, status.json, the recorder's records), with the other ways the same
outcome could come about switched off where that matters (periodic rescans).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from conftest import acked, files, records, wait_until, write_config

from ipcpool import Client

RESCANS_OFF = 3600.0


def _errors(root: Path, group: str = "main") -> dict[str, dict[str, Any]]:
    """original file name -> its .error.json record."""
    folder = root / group / "errors"
    out: dict[str, dict[str, Any]] = {}
    for name in files(root, group, "errors"):
        if name.endswith(".error.json"):
            record = json.loads((folder / name).read_text())
            out[record["originalName"]] = record
    return out


def _drop(root: Path, group: str, name: str, body: dict[str, Any]) -> None:
    """Publish like any writer: tmp/, then rename into messages/."""
    staged = root / group / "tmp" / f".{name}.part"
    staged.write_text(json.dumps(body))
    os.rename(staged, root / group / "messages" / name)


def _settled(root: Path, group: str = "main") -> bool:
    return not files(root, group, "messages") and not files(root, group, "processing")


# -- guarantee 3: at-least-once, deduplicated by id --------------------------------------------------------


def test_a_republish_while_the_first_copy_is_in_a_workers_hands_waits_then_meets_its_ack(
        tmp_path, root, supervisor_factory):
    """Guarantee 3: the same file name re-published while in flight is held back, then removed and re-acked.

    Periodic rescans are off, so only the supervisor's own bookkeeping (the copy
    that arrived while its name was in flight) can bring the second copy back.
    """
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"rescan_interval": RESCANS_OFF},
                                                               "pool": {"handler_timeout": 120.0}})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    body = {"id": "inflight-1", "type": "task", "payload": {"gate": str(gate)}, "requiresAck": True}
    _drop(root, "main", "inflight-1.json", body)
    wait_until(lambda: records(tmp_path), 20, message="the first copy running")
    assert files(root, "main", "processing") == ["inflight-1.json"]
    _drop(root, "main", "inflight-1.json", body)  # the sender re-sends: same name, same id
    assert files(root, "main", "messages") == ["inflight-1.json"]
    gate.touch()
    wait_until(lambda: acked(root, ["inflight-1"]), 30, message="the first copy acked")
    wait_until(lambda: _settled(root), 30, message="the second copy taken, found acked and removed")
    assert [r["id"] for r in records(tmp_path)] == ["inflight-1"], "handled once"
    assert _errors(root) == {}
    status = wait_until(lambda: (s := sup.status()) and s["totals"]["duplicates"] == 1 and s, 20,
                        message="the second copy counted as a duplicate")
    assert status["totals"]["handled"] == 1
    assert sup.stop() == 0


# -- guarantee 6: handlers are named in config, never in messages ------------------------------------------


def test_a_message_can_never_name_its_handler(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record"})
    sup = supervisor_factory(config)
    # A type that reads like a handler reference (':' and '.' are allowed in type names) ...
    _drop(root, "main", "by-type.json", {"id": "by-type", "type": "recorder:record_async", "payload": {},
                                         "requiresAck": True})
    # ... handler-ish keys in an envelope of an unrouted type ...
    _drop(root, "main", "by-key.json", {"id": "by-key", "type": "mystery", "payload": {}, "requiresAck": True,
                                        "handler": "recorder:record_async", "function": "recorder:record_async"})
    # ... and the same keys on a routed type: the configured handler runs, not the named one.
    _drop(root, "main", "routed.json", {"id": "routed", "type": "task", "payload": {}, "requiresAck": True,
                                        "handler": "recorder:record_async"})
    errors = wait_until(lambda: (e := _errors(root)) and len(e) == 2 and e, 20, message="two messages in errors/")
    assert errors["by-type.json"]["reason"] == "no handler for type recorder:record_async"
    assert errors["by-key.json"]["reason"] == "no handler for type mystery"
    wait_until(lambda: acked(root, ["routed"]), 20, message="the routed message acked")
    (record,) = records(tmp_path)
    assert record["id"] == "routed" and record["handler"] == "record"
    assert not acked(root, ["by-type"]) and not acked(root, ["by-key"])
    assert sup.stop() == 0


# -- [handlers]: "*", legacy, async def, heartbeat -----------------------------------------------------


def test_star_legacy_and_async_handlers_run_in_a_real_worker(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record",
                                                               "legacy": "recorder:record_legacy",
                                                               "*": "recorder:record_async"})
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        # any other type goes to "*", here an async def; its awaited result is the reply
        assert client.request("main", "other", {"result": {"from": "star"}}, timeout=20) == {"from": "star"}
        task = client.send("main", "task", {"n": 1}, requires_ack=True)
    _drop(root, "main", "plain.json", {"not": "an envelope"})  # legacy: the whole body is the payload
    wait_until(lambda: acked(root, [task]) and len(records(tmp_path)) >= 3, 20, message="every message handled")
    wait_until(lambda: _settled(root), 20, message="messages/ and processing/ empty")
    by_handler: dict[str, list[dict[str, Any]]] = {}
    for r in records(tmp_path):
        by_handler.setdefault(r["handler"], []).append(r)
    assert [(r["type"], r["payload"]) for r in by_handler["record_async"]] == [("other", {"result": {"from": "star"}})]
    assert [r["id"] for r in by_handler["record"]] == [task]
    (legacy,) = by_handler["record_legacy"]
    assert legacy["legacy"] is True and legacy["payload"] == {"not": "an envelope"}
    assert legacy["id"] == "plain", "a legacy message's id is its file name"
    assert _errors(root) == {}
    assert sup.stop() == 0


def test_a_configured_heartbeat_handler_handles_heartbeats_instead_of_status(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record",
                                                               "heartbeat": "recorder:record"})
    sup = supervisor_factory(config)
    with Client(root, "main") as client:
        beat = client.send("main", "heartbeat", {"processId": 4242, "status": "active"}, requires_ack=True)
    wait_until(lambda: acked(root, [beat]), 20, message="the heartbeat acked")
    (record,) = wait_until(lambda: records(tmp_path), 20, message="the heartbeat handled")
    assert record["type"] == "heartbeat" and record["payload"] == {"processId": 4242, "status": "active"}
    status = wait_until(lambda: (s := sup.status()) and s["writtenAt"] > record["at"] and s, 20,
                        message="a status written after the heartbeat was handled")
    assert status["externalHeartbeats"] == [], "handled by its handler, so not recorded"
    assert sup.stop() == 0
