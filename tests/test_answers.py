"""Answers to senders: a message that ends in errors/ answers its waiting sender at once (a nack),
a queued message is never replaced, and a sender with no supervisor is told so.

Each wait here has a deadline far past the answer's (a request's timeout of 120 s inside a command
allowed 60 s): a sender left to wait out its timeout fails the test instead of passing slowly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import records, wait_until, write_config

from ipcpool import AsyncClient, Client, HandlerError, MessageExists, MessageFailed, MessageRejected, ResponseTimeout
from ipcpool.config import AckConfig

LONG = AckConfig(timeout=120, max_retries=3, retry_delay=0.05)

pytestmark = pytest.mark.portable  # also run with Linux's interfaces removed (.ci/run)


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "ipcpool", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"ipcpool {' '.join(args)} waited instead of answering\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _records(root: Path, group: str = "main") -> list[dict]:
    folder = root / group / "errors"
    return [json.loads((folder / n).read_text()) for n in sorted(os.listdir(folder)) if n.endswith(".error.json")]


def _nack(root: Path, message_id: str, group: str = "main") -> dict:
    return json.loads((root / group / "acks" / f"{message_id}.nack").read_text())


@pytest.fixture
def pool(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root,
                          handlers={"task": "recorder:record", "other": "recorder:record"},
                          sections={"pool": {"max_deliveries": 2}},
                          groups=["main", "strict"])
    with open(config, "a") as handle:
        handle.write('\n[groups.strict]\nallowed_types = ["task"]\n')
    sup = supervisor_factory(config)
    yield config, sup
    sup.stop()


def test_cli_request_of_a_type_with_no_handler_answers_at_once(tmp_path, root, env, pool):
    config, _sup = pool
    out = _cli(env, tmp_path, "request", "--config", str(config), "--group", "main", "--type", "nohandler",
               "--timeout", "120")
    assert out.returncode == 1, out.stderr
    assert "no handler for type nohandler" in out.stderr
    assert "rejected" in out.stderr and "main/errors/" in out.stderr, "says where the record is"
    assert "Traceback" not in out.stderr


def test_cli_send_ack_to_a_type_the_group_refuses_is_answered_once(tmp_path, root, env, pool):
    config, _sup = pool
    out = _cli(env, tmp_path, "send", "--config", str(config), "--group", "strict", "--type", "other", "--ack",
               "--timeout", "120")
    assert out.returncode == 1, out.stderr
    assert "is not allowed in group 'strict'" in out.stderr
    assert "Retrying IPC message" not in out.stderr, "a quarantined message is never re-published"
    (record,) = _records(root, "strict")
    assert record["type"] == "other" and record["id"], "one record, with the id and type the envelope gave"
    assert "is `ipcpool run` up" not in out.stderr


def test_send_and_wait_raises_the_rejection_with_its_reason_and_record(root, pool):
    with Client(root, "main", ack=LONG) as client, pytest.raises(MessageRejected) as caught:
        client.send_and_wait("main", "nohandler", {"n": 1})
    error = caught.value
    assert error.reason == "no handler for type nohandler"
    assert error.outcome == "rejected"
    assert error.error_file.startswith("main/errors/") and (root / error.error_file).exists()
    assert (root / (error.error_file + ".error.json")).exists()
    nack = _nack(root, error.message_id)  # what an outside writer with nothing installed sees
    assert nack["reason"] == error.reason and nack["outcome"] == "rejected" and nack["type"] == "nohandler"
    assert not (root / "main" / "acks" / f"{error.message_id}.ack").exists(), "a nack is never an ack"


def test_send_and_wait_raises_message_failed_after_the_handler_retries(root, pool):
    with Client(root, "main", ack=LONG) as client, pytest.raises(MessageFailed) as caught:
        client.send_and_wait("main", "task", {"raise": "boom"})
    error = caught.value
    assert isinstance(error, HandlerError)
    assert "boom" in error.reason and error.outcome == "failed" and error.error_type == "RuntimeError"
    assert (root / error.error_file).exists()


def test_request_raises_message_failed_carrying_the_record(root, pool):
    with Client(root, "main") as client, pytest.raises(MessageFailed) as caught:
        client.request("main", "task", {"raise": "boom"}, timeout=120)
    assert caught.value.error_type == "RuntimeError" and "boom" in caught.value.error
    wait_until(lambda: (root / caught.value.error_file).exists(), message="the record the response names")


def test_a_poison_message_answers_its_sender(tmp_path, root, pool):
    with Client(root, "main", ack=LONG) as client, pytest.raises(MessageFailed) as caught:
        client.send_and_wait("main", "task", {"exit": 9})
    error = caught.value
    assert error.outcome == "poisoned" and "poison" in error.reason
    deliveries = [r for r in records(tmp_path) if r["id"] == error.message_id]
    assert len(deliveries) == 2, "max_deliveries deliveries, then the nack"
    (record,) = _records(root)
    assert record["id"] == error.message_id and record["type"] == "task"


def test_outside_writers_messages_are_answered_by_file(root, pool):
    """Invalid, mismatched and oversized files: the nack is under the id (or the file's name)."""
    messages = root / "main" / "messages"
    cases = {
        "badjson": (b'{"id": "badjson", "type": "task", "payload": ', "invalid JSON"),
        "mismatch": (json.dumps({"id": "mismatch", "type": "task", "payload": {}, "groupFolder": "other",
                                 "requiresAck": True}).encode(), "group mismatch"),
        "huge": (json.dumps({"id": "huge", "type": "task", "payload": "x" * 1_100_000,
                             "requiresAck": True}).encode(), "too large"),
    }
    for name, (body, _why) in cases.items():
        staged = root / "main" / "tmp" / f"{name}.json"
        staged.write_bytes(body)
        os.rename(staged, messages / f"{name}.json")
    for name, (_body, why) in cases.items():
        wait_until(lambda name=name: (root / "main" / "acks" / f"{name}.nack").exists(), 30, message=f"{name}'s nack")
        nack = _nack(root, name)
        assert why in nack["reason"] and nack["outcome"] == "rejected"
        assert (root / nack["errorFile"]).exists()


def test_async_client_raises_rejections_and_failures(root, pool):
    async def scenario() -> tuple[BaseException, BaseException]:
        client = AsyncClient(Client(root, "main", ack=LONG))
        try:
            with pytest.raises(MessageRejected) as rejected:
                await client.send_and_wait("main", "nohandler", {})
            with pytest.raises(MessageFailed) as failed:
                await client.request("main", "task", {"raise": "boom"}, timeout=120)
            return rejected.value, failed.value
        finally:
            client.close()

    rejected, failed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "no handler" in str(rejected) and "boom" in str(failed)


def test_an_older_nack_of_the_same_id_does_not_answer_a_new_send(root, pool):
    with Client(root, "main", ack=LONG) as client:
        with pytest.raises(MessageRejected):
            client.send_and_wait("main", "nohandler", {}, message_id="reused-id")
        # the same id, sent again to a type with a handler: the old nack is not its answer
        assert client.send_and_wait("main", "task", {"n": 2}, message_id="reused-id") == "reused-id"


def test_a_queued_message_is_never_replaced(tmp_path, root):
    with Client(root, "main") as client:
        client.send("main", "task", {"n": 1}, message_id="job-1")
        with pytest.raises(MessageExists) as caught:
            client.send("main", "task", {"n": 2}, message_id="job-1")
        assert "job-1.json" in str(caught.value) and "already queued" in str(caught.value)
        body = json.loads((root / "main" / "messages" / "job-1.json").read_text())
        assert body["payload"] == {"n": 1}, "the first message is intact"
        assert os.listdir(root / "main" / "tmp") == [], "the refused copy left nothing behind"
        # an identical re-publish (the ack retry path) is the same message: accepted, one copy
        data = (root / "main" / "messages" / "job-1.json").read_bytes()
        client.outbox.publish("main", "job-1.json", data)
        assert os.listdir(root / "main" / "messages") == ["job-1.json"]


def test_request_with_no_supervisor_says_so(root):
    with Client(root, "main") as client, pytest.raises(ResponseTimeout) as caught:
        client.request("main", "task", {}, timeout=0.2)
    assert f"no ipcpool supervisor is running for {root}" in str(caught.value)
    assert "will be handled when one starts" in str(caught.value)
