"""ipcpool.Client and AsyncClient against real spools: acks, retries, dedupe, request/response, back-pressure.

Tests that need a pool run a real supervisor (``supervisor_factory``); tests of
what a sender does when nobody answers run with no supervisor at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest
from conftest import files, records, wait_until, write_config

from ipcpool import AckTimeout, AsyncClient, Client, HandlerError, Message, QueueFull, ResponseTimeout
from ipcpool.config import AckConfig


def _ack(root: Path, message_id: str, group: str = "main") -> Path:
    return root / group / "acks" / f"{message_id}.ack"


def _client_log(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ipcpool.client" and text in r.getMessage()]


def _settled(root: Path, group: str = "main") -> bool:
    return not files(root, group, "messages") and not files(root, group, "processing")


# -- ack round trip ----------------------------------------------------------------------------------


def test_send_with_wait_and_send_and_wait_return_once_the_ack_exists(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    with Client(root, "main", ack=AckConfig(timeout=20.0, max_retries=1, retry_delay=0.1)) as client:
        first = client.send("main", "task", {"n": 1}, requires_ack=True, wait=True)
        assert _ack(root, first).exists(), "send(wait=True) returned before acks/<id>.ack existed"
        assert client.is_acked("main", first)

        second = client.send_and_wait("main", "task", {"n": 2})
        assert second != first
        assert _ack(root, second).exists(), "send_and_wait returned before acks/<id>.ack existed"

    wait_until(lambda: _settled(root), 20, message="messages/ and processing/ empty")
    assert sorted(r["id"] for r in records(tmp_path)) == sorted([first, second])
    assert files(root, "main", "errors") == []


# -- giving up ---------------------------------------------------------------------------------------


def test_ack_timeout_after_one_plus_max_retries_attempts_leaves_one_copy(tmp_path, root, supervisor_factory, caplog):
    caplog.set_level(logging.INFO, logger="ipcpool.client")
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "handler_timeout": 30.0}})
    sup = supervisor_factory(config)
    given_up: list[Message] = []
    policy = AckConfig(timeout=0.2, max_retries=2, retry_delay=0.05)
    with Client(root, "main", ack=policy, on_give_up=given_up.append) as client, \
            pytest.raises(AckTimeout) as caught:
        client.send_and_wait("main", "task", {"sleep": 3})  # slower than every attempt's wait

    error = caught.value
    assert error.attempts == 3, "1 + max_retries attempts"
    assert error.group == "main"
    message_id = error.message_id
    assert message_id
    assert "ACK timeout" in str(error)
    assert "the supervisor is running" in str(error), "the hint says why"

    # not acked yet, and the retries kept one copy, under its id (in flight: never re-sent)
    assert not _ack(root, message_id).exists()
    assert files(root, "main", "messages") + files(root, "main", "processing") == [f"{message_id}.json"]

    timeouts = _client_log(caplog, "ACK timeout")
    assert len(timeouts) == 3, [r.getMessage() for r in timeouts]
    assert all(message_id in r.getMessage() for r in timeouts)
    retries = _client_log(caplog, "Retrying IPC message")
    assert len(retries) == 2, [r.getMessage() for r in retries]
    assert all(message_id in r.getMessage() and "not re-sent" in r.getMessage() for r in retries)
    sup.stop()

    assert len(given_up) == 1
    report = given_up[0]
    assert isinstance(report, Message)
    assert report.type == "error"
    assert report.group == "main"
    assert report.payload["recoverable"] is False
    assert report.payload["messageId"] == message_id
    assert report.payload["attempts"] == 3


def test_ack_timeout_with_no_retries_makes_one_attempt(tmp_path, root, caplog):
    caplog.set_level(logging.INFO, logger="ipcpool.client")
    with Client(root, "main", ack=AckConfig(timeout=0.1, max_retries=0, retry_delay=0.05)) as client, \
            pytest.raises(AckTimeout) as caught:
        client.send_and_wait("main", "task", {"n": 1}, wait_for_supervisor=True)  # the attempts, not the fail-fast
    assert caught.value.attempts == 1
    assert len(_client_log(caplog, "ACK timeout")) == 1
    assert _client_log(caplog, "Retrying IPC message") == []
    assert files(root, "main", "messages") == [f"{caught.value.message_id}.json"]


def test_a_pool_that_starts_while_a_sender_waits_acks_the_one_queued_copy(tmp_path, root, supervisor_factory,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="ipcpool.client")
    config = write_config(tmp_path / "c.toml", root)
    outcome: dict[str, object] = {}

    def sender() -> None:
        with Client(root, "main", ack=AckConfig(timeout=30, max_retries=1, retry_delay=0.05)) as client:
            try:
                outcome["id"] = client.send_and_wait("main", "task", {"n": 1}, wait_for_supervisor=True)
            except Exception as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        wait_until(lambda: files(root, "main", "messages"), 20, message="the message queued")
        supervisor_factory(config)
    finally:
        thread.join(60)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    message_id = outcome["id"]
    assert _ack(root, message_id).exists()
    wait_until(lambda: _settled(root), 20, message="messages/ and processing/ empty")
    assert [r["id"] for r in records(tmp_path)] == [message_id], "handled exactly once"
    assert _client_log(caplog, "re-published") == []


def test_async_ack_timeout_against_a_stopped_pool(tmp_path, root):
    given_up: list[Message] = []

    async def scenario() -> None:
        client = AsyncClient(Client(root, "main", ack=AckConfig(timeout=0.2, max_retries=2, retry_delay=0.05),
                                    on_give_up=given_up.append))
        try:
            await client.send_and_wait("main", "task", {"n": 1})
        finally:
            client.close()

    with pytest.raises(AckTimeout) as caught:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    assert caught.value.attempts == 1, "no supervisor: the first attempt's time-out ends the wait"
    assert "no ipcpool supervisor is running" in str(caught.value)
    assert caught.value.group == "main"
    assert files(root, "main", "messages") == [f"{caught.value.message_id}.json"]
    assert [m.payload["recoverable"] for m in given_up] == [False]


# -- a handler slower than the ack timeout ------------------------------------------------------------


def test_a_handler_slower_than_the_ack_timeout_is_handled_once(tmp_path, root, supervisor_factory, caplog):
    caplog.set_level(logging.INFO, logger="ipcpool.client")
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    # 4 attempts x 0.5 s + 3 x 0.5 s delays = a 3.5 s window for a 1.5 s handler
    policy = AckConfig(timeout=0.5, max_retries=3, retry_delay=0.5)
    with Client(root, "main", ack=policy) as client:
        try:
            message_id = client.send_and_wait("main", "task", {"sleep": 1.5})
            gave_up = False
        except AckTimeout as exc:  # a very loaded machine: the invariant below must still hold
            message_id = exc.message_id
            gave_up = True

    wait_until(lambda: _ack(root, message_id).exists(), 30, message="the ack of the slow message")
    wait_until(lambda: _settled(root), 20, message="messages/ and processing/ empty")
    handled = [r for r in records(tmp_path) if r["id"] == message_id]
    assert len(handled) == 1, f"handled {len(handled)} times: {handled}"
    assert files(root, "main", "errors") == []
    assert _client_log(caplog, "Retrying IPC message"), "the sender should have retried at least once"
    assert _client_log(caplog, "re-published") == [], "a message still queued or in flight was sent again"
    if not gave_up:
        assert _client_log(caplog, "ACK received")


# -- dedupe on the ack ledger ---------------------------------------------------------------------------


STALE_ACK = "2000-01-01T00:00:00.000Z"


def test_an_id_that_already_has_an_ack_is_not_handled_again(tmp_path, root, supervisor_factory):
    """Guarantee 3: a message whose id already has an ack is removed and re-acked, not handled again."""
    config = write_config(tmp_path / "c.toml", root)
    with Client(root, "main") as client:
        message_id = client.send("main", "task", {"n": 7}, requires_ack=True)
        original = (root / "main" / "messages" / f"{message_id}.json").read_bytes()
        sup = supervisor_factory(config)
        wait_until(lambda: _ack(root, message_id).exists(), 30, message="the first delivery's ack")
        wait_until(lambda: _settled(root), 20, message="first delivery done")
        assert len(records(tmp_path)) == 1

        # Mark the ack, so the re-ack of each duplicate can be seen (an ack holds the time it was written).
        _ack(root, message_id).write_text(STALE_ACK)
        # a re-send with the same id, through the client
        again = client.send("main", "task", {"n": 7}, requires_ack=True, message_id=message_id)
        assert again == message_id
        wait_until(lambda: _ack(root, message_id).read_text() != STALE_ACK, 20, message="the duplicate re-acked")
        wait_until(lambda: _settled(root), 20, message="the duplicate removed from messages/ and processing/")

        # and the very same bytes, published like any writer would (tmp/ then rename)
        _ack(root, message_id).write_text(STALE_ACK)
        staged = root / "main" / "tmp" / f"{message_id}.json"
        staged.write_bytes(original)
        os.rename(staged, root / "main" / "messages" / f"{message_id}.json")
        wait_until(lambda: _ack(root, message_id).read_text() != STALE_ACK, 20,
                   message="the byte-identical duplicate re-acked")
        wait_until(lambda: _settled(root), 20, message="the byte-identical duplicate removed")

    assert [r["id"] for r in records(tmp_path)] == [message_id], "an acked id was handled again"
    assert _ack(root, message_id).read_text().endswith("Z"), "the re-ack is a fresh ISO-8601 timestamp"
    assert files(root, "main", "errors") == [], "a duplicate is removed, not quarantined"
    status = wait_until(lambda: (s := sup.status()) and s["totals"]["duplicates"] == 2 and s, 20,
                        message="two duplicates counted in status.json")
    assert status["totals"]["handled"] == 1


# -- request / response ---------------------------------------------------------------------------------


def test_request_returns_the_result_and_removes_the_response_file(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    with Client(root, "main") as client:
        result = client.request("main", "task", {"result": {"x": 1}}, timeout=10)
    assert result == {"x": 1}
    handled = records(tmp_path)
    assert len(handled) == 1
    request_id = handled[0]["id"]
    assert not (root / "main" / "responses" / f"{request_id}.json").exists()
    assert files(root, "main", "responses") == []


def test_request_from_another_group_gets_its_reply_in_its_own_group(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, groups=["main", "agent"])
    supervisor_factory(config)
    with Client(root, "agent") as client:
        assert client.request("main", "task", {"result": [1, 2, 3]}, timeout=10) == [1, 2, 3]
    assert files(root, "agent", "responses") == []
    assert files(root, "main", "responses") == []


def test_request_raises_handler_error_when_the_handler_raises(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    with Client(root, "main") as client, pytest.raises(HandlerError) as caught:
        client.request("main", "task", {"raise": "boom"}, timeout=10)
    assert "boom" in str(caught.value)
    assert "boom" in caught.value.error
    assert caught.value.error_type == "RuntimeError"
    assert not (root / "main" / "responses" / f"{caught.value.message_id}.json").exists()
    # the failed request is quarantined like any failed message
    wait_until(lambda: any(n.endswith(".error.json") for n in files(root, "main", "errors")), 20,
               message="the failed request in errors/")


def test_request_without_a_pool_raises_response_timeout(tmp_path, root):
    with Client(root, "main") as client, pytest.raises(ResponseTimeout) as caught:
        client.request("main", "task", {"result": 1}, timeout=0.3)
    assert caught.value.group == "main"
    assert files(root, "main", "messages") == [f"{caught.value.message_id}.json"]


# -- asyncio ------------------------------------------------------------------------------------------------


def test_async_client_send_and_wait_and_request(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)

    async def scenario() -> tuple[str, object]:
        client = AsyncClient(Client(root, "main", ack=AckConfig(timeout=20.0, max_retries=1, retry_delay=0.1)))
        try:
            acked = await client.send_and_wait("main", "task", {"n": 1})
            assert _ack(root, acked).exists()
            result = await client.request("main", "task", {"result": {"x": 1}}, timeout=10)
            return acked, result
        finally:
            client.close()

    acked, result = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert result == {"x": 1}
    assert files(root, "main", "responses") == []
    wait_until(lambda: len(records(tmp_path)) == 2, 20, message="both messages handled")
    assert acked in {r["id"] for r in records(tmp_path)}


def test_many_concurrent_async_send_and_wait_calls_all_complete(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    count = 50

    async def scenario() -> list[str]:
        client = AsyncClient(Client(root, "main", ack=AckConfig(timeout=30.0, max_retries=1, retry_delay=0.1)))
        try:
            return await asyncio.gather(*(client.send_and_wait("main", "task", {"n": i}) for i in range(count)))
        finally:
            client.close()

    ids = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert len(set(ids)) == count
    assert all(_ack(root, i).exists() for i in ids)
    wait_until(lambda: _settled(root), 20, message="messages/ and processing/ empty")
    assert sorted(r["id"] for r in records(tmp_path)) == sorted(ids), "each handled exactly once"


# -- back-pressure --------------------------------------------------------------------------------------------


def test_queue_full_on_the_send_past_max_queued(tmp_path, root):
    with Client(root, "main", max_queued=5) as client:
        ids = [client.send("main", "task", {"n": i}) for i in range(5)]
        with pytest.raises(QueueFull) as caught:
            client.send("main", "task", {"n": 5})
        assert caught.value.group == "main"
        assert caught.value.limit == 5
        assert "queue full" in str(caught.value)
        # send_and_wait is refused the same way, before any wait
        with pytest.raises(QueueFull):
            client.send_and_wait("main", "task", {"n": 6}, timeout=0.1)
    assert files(root, "main", "messages") == sorted(f"{i}.json" for i in ids)
    assert files(root, "main", "tmp") == []
