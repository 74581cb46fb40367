"""ipcpool.message: envelopes, legacy messages, types and the two strict codecs."""

from __future__ import annotations

import json

import msgpack
import pytest
from wire import to_wire

from ipcpool.errors import InvalidMessage
from ipcpool.message import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    IPCMessageType,
    Message,
    build_envelope,
    check_group_name,
    decode,
    encode,
    extension_for,
    format_for,
    is_envelope,
    now_iso,
    to_message,
)


def parse(data: bytes, fmt: str, **where: object) -> Message:
    """Bytes to a validated Message, as a worker does it (decode, then validate)."""
    return to_message(decode(data, fmt), **where)  # type: ignore[arg-type]


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _envelope(**overrides: object) -> dict[str, object]:
    env: dict[str, object] = {
        "id": "3f0c7f3e-8d7e-4d63-9a55-0d3c4e0a1b2c",
        "type": "task",
        "groupFolder": "main",
        "payload": {"taskId": 123},
        "timestamp": "2024-01-01T00:00:00.000Z",
        "requiresAck": True,
    }
    env.update(overrides)
    return env


# -- envelopes ------------------------------------------------------------------


def test_valid_envelope_becomes_message_with_python_names():
    msg = parse(_json(_envelope(replyTo="group1")), "json", group="main", stem="file-stem", delivery_count=2)
    assert isinstance(msg, Message)
    assert msg.id == "3f0c7f3e-8d7e-4d63-9a55-0d3c4e0a1b2c"
    assert msg.type == "task"
    assert msg.group == "main"
    assert msg.payload == {"taskId": 123}
    assert msg.timestamp == "2024-01-01T00:00:00.000Z"
    assert msg.requires_ack is True
    assert msg.reply_to == "group1"
    assert msg.delivery_count == 2
    assert msg.legacy is False
    assert msg.extra == {}


def test_envelope_without_optional_keys_gets_defaults():
    msg = parse(_json({"type": "command", "payload": None}), "json", group="main", stem="abc-1")
    assert msg.id == "abc-1"  # falls back to the file stem
    assert msg.type == "command"
    assert msg.payload is None
    assert msg.requires_ack is False
    assert msg.reply_to is None
    assert msg.legacy is False
    assert msg.timestamp.endswith("Z")


def test_envelope_without_id_and_unusable_stem_is_rejected():
    with pytest.raises(InvalidMessage, match="no id"):
        parse(_json({"type": "task", "payload": 1}), "json", group="main", stem="has space")


def test_custom_type_strings_are_allowed():
    msg = parse(_json(_envelope(type="billing.invoice:v2")), "json", group="main", stem="x")
    assert msg.type == "billing.invoice:v2"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"type": 5}, "type"),
        ({"type": ""}, "type"),
        ({"type": "has space"}, "type"),
        ({"type": "a" * 65}, "type"),
        ({"requiresAck": "yes"}, "requiresAck"),
        ({"requiresAck": 1}, "requiresAck"),
        ({"timestamp": 12345}, "timestamp"),
        ({"groupFolder": 7}, "groupFolder"),
        ({"replyTo": "not a group"}, "replyTo"),
        ({"replyTo": 3}, "replyTo"),
        ({"id": 42}, "id"),
        ({"id": None}, "id"),
    ],
)
def test_invalid_envelope_fields_are_rejected_with_the_field_named(overrides, fragment):
    with pytest.raises(InvalidMessage, match=fragment):
        parse(_json(_envelope(**overrides)), "json", group="main", stem="x")


def test_group_mismatch_is_rejected():
    with pytest.raises(InvalidMessage, match="group mismatch"):
        parse(_json(_envelope(groupFolder="other")), "json", group="main", stem="x")


def test_missing_group_folder_takes_the_arrival_group():
    env = _envelope()
    del env["groupFolder"]
    msg = parse(_json(env), "json", group="group1", stem="x")
    assert msg.group == "group1"


def test_unknown_keys_are_preserved_in_extra_and_on_the_wire():
    env = _envelope(priority=5, traceId="t-1", nested={"a": [1, 2]})
    msg = parse(_json(env), "json", group="main", stem="x")
    assert msg.extra == {"priority": 5, "traceId": "t-1", "nested": {"a": [1, 2]}}
    wire = to_wire(msg)
    assert wire["priority"] == 5
    assert wire["traceId"] == "t-1"
    assert wire == env


# -- legacy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"taskId": 1, "action": "run"},
        {"type": "task"},  # a type but no payload
        {"payload": {"a": 1}},  # a payload but no type
        [1, 2, 3],
        "just a string",
        42,
        None,
        {},
    ],
)
def test_non_envelope_json_is_a_legacy_message_with_the_stem_as_id(body):
    msg = parse(_json(body), "json", group="main", stem="legacy-file-7", delivery_count=3)
    assert msg.legacy is True
    # a legacy body's own string type routes it (the original system's task commands); else "legacy"
    assert msg.type == (body["type"] if isinstance(body, dict) and "type" in body else "legacy")
    assert msg.id == "legacy-file-7"
    assert msg.group == "main"
    assert msg.payload == body
    assert msg.requires_ack is False
    assert msg.delivery_count == 3


def test_legacy_msgpack_message():
    msg = parse(msgpack.packb({"taskId": 9}), "msgpack", group="main", stem="old")
    assert msg.legacy is True
    assert msg.payload == {"taskId": 9}
    assert msg.id == "old"


def test_is_envelope():
    assert is_envelope({"type": "t", "payload": None})
    assert not is_envelope({"type": "t"})
    assert not is_envelope(["type", "payload"])


# -- types ------------------------------------------------------------------------


def test_ipc_message_type_values():
    assert {t.value for t in IPCMessageType} == {"task", "command", "response", "error", "heartbeat"}
    assert IPCMessageType.TASK == "task"
    assert IPCMessageType.COMMAND.value == "command"
    assert IPCMessageType.RESPONSE == "response"
    assert IPCMessageType.ERROR == "error"
    assert IPCMessageType.HEARTBEAT == "heartbeat"
    assert str(IPCMessageType.TASK) == "task"
    assert f"{IPCMessageType.HEARTBEAT}" == "heartbeat"


def test_ipc_message_type_is_usable_as_envelope_type():
    env = build_envelope("main", IPCMessageType.HEARTBEAT, {})
    assert env["type"] == "heartbeat"
    assert type(json.loads(encode(env, "json"))["type"]) is str


# -- names and helpers --------------------------------------------------------------


@pytest.mark.parametrize("name", ["main", "group1", "A", "a_b-c", "9" * 64])
def test_valid_group_names(name):
    assert check_group_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "_lead", "a b", "a/b", "..", "a" * 65, "é", 5, None])
def test_invalid_group_names(name):
    with pytest.raises(InvalidMessage, match="invalid group name"):
        check_group_name(name)


def test_group_name_with_trailing_newline_is_invalid():
    with pytest.raises(InvalidMessage):
        check_group_name("main\n")


def test_format_and_extension_helpers():
    assert format_for("a.json") == "json"
    assert format_for("a.msgpack") == "msgpack"
    assert format_for("a.txt") is None
    assert format_for("a.json.tmp") is None
    assert extension_for("json") == ".json"
    assert extension_for("msgpack") == ".msgpack"


def test_now_iso_looks_like_javascript_to_iso_string():
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())


def test_build_envelope_has_the_wire_keys():
    env = build_envelope("main", "task", {"n": 1}, requires_ack=True, reply_to="group1", message_id="m-1")
    assert env["id"] == "m-1"
    assert env["groupFolder"] == "main"
    assert env["requiresAck"] is True
    assert env["replyTo"] == "group1"
    assert set(env) == {"id", "type", "groupFolder", "payload", "timestamp", "requiresAck", "replyTo"}
    generated = build_envelope("main", "task", None)
    assert len(generated["id"]) == 36
    assert "replyTo" not in generated


@pytest.mark.parametrize(
    "kwargs", [{"group": "bad group"}, {"reply_to": "../x"}, {"type_": "bad type"}, {"message_id": "../x"}]
)
def test_build_envelope_rejects_what_the_receiver_would_reject(kwargs):
    args = {"group": "main", "type_": "task", "payload": {}}
    args.update(kwargs)
    with pytest.raises(InvalidMessage):
        build_envelope(args.pop("group"), args.pop("type_"), args.pop("payload"), **args)


# -- unsafe ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\x00b", "", "..", "/etc/passwd", "a b", "x" * 129, "abc\n"])
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_unsafe_ids_are_rejected(bad_id, fmt):
    data = encode(_envelope(id=bad_id), fmt)
    with pytest.raises(InvalidMessage, match="id"):
        parse(data, fmt, group="main", stem="x")


def test_longest_allowed_id_is_accepted():
    msg = parse(_json(_envelope(id="a" * 128)), "json", group="main", stem="x")
    assert msg.id == "a" * 128


# -- JSON strictness ------------------------------------------------------------------------


def test_json_duplicate_keys_rejected():
    with pytest.raises(InvalidMessage, match="duplicate key"):
        parse(b'{"type": "task", "payload": 1, "type": "evil"}', "json", group="main", stem="x")


def test_json_duplicate_keys_rejected_when_nested():
    with pytest.raises(InvalidMessage, match="duplicate key"):
        decode(b'{"payload": {"a": 1, "a": 2}}', "json")


@pytest.mark.parametrize(
    "text", ['{"v": NaN}', '{"v": Infinity}', '{"v": -Infinity}', "NaN", '{"v": 1e400}', '{"v": -1e400}']
)
def test_json_nan_and_infinity_rejected(text):
    with pytest.raises(InvalidMessage):
        parse(text.encode(), "json", group="main", stem="x")


def test_json_integer_digit_limit():
    ok = "9" * MAX_INT_DIGITS
    assert decode(f'{{"n": {ok}}}'.encode(), "json") == {"n": int(ok)}
    assert decode(f'{{"n": -{ok}}}'.encode(), "json") == {"n": -int(ok)}
    with pytest.raises(InvalidMessage, match="digits"):
        parse(f'{{"n": {ok}9}}'.encode(), "json", group="main", stem="x")
    with pytest.raises(InvalidMessage, match="digits"):
        parse(f'{{"n": -{ok}9}}'.encode(), "json", group="main", stem="x")
    with pytest.raises(InvalidMessage):
        parse(("1" * 10000).encode(), "json", group="main", stem="x")


def test_json_nesting_limit():
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert decode(at_limit.encode(), "json") is not None
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidMessage, match="nested deeper"):
        parse(too_deep.encode(), "json", group="main", stem="x")
    mixed = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidMessage, match="nested deeper"):
        parse(mixed.encode(), "json", group="main", stem="x")


def test_json_hostile_nesting_is_rejected_without_recursion_error():
    with pytest.raises(InvalidMessage):
        parse(b"[" * 200_000, "json", group="main", stem="x")


def test_json_brackets_inside_strings_do_not_count_as_nesting():
    body = {"type": "task", "payload": "[" * 500 + "{" * 500 + '\\"['}
    msg = parse(_json(body), "json", group="main", stem="x")
    assert msg.payload == body["payload"]


@pytest.mark.parametrize("data", [b'{"a": "\xff"}', b"\xff\xfe{}", '{"a": 1}'.encode("utf-16")])
def test_json_non_utf8_rejected(data):
    with pytest.raises(InvalidMessage, match="UTF-8"):
        parse(data, "json", group="main", stem="x")


def test_json_utf8_bom_is_tolerated():
    msg = parse(b"\xef\xbb\xbf" + _json(_envelope()), "json", group="main", stem="x")
    assert msg.type == "task"


def test_json_truncated_rejected():
    full = _json(_envelope())
    for cut in (0, 1, len(full) // 2, len(full) - 1):
        with pytest.raises(InvalidMessage, match="invalid JSON"):
            parse(full[:cut], "json", group="main", stem="x")


def test_json_trailing_garbage_rejected():
    with pytest.raises(InvalidMessage):
        parse(_json(_envelope()) + b" {}", "json", group="main", stem="x")


@pytest.mark.parametrize("around", [(b"", b"\n"), (b"", b" \r\n\t"), (b"\n ", b""), (b" ", b"\n")])
def test_json_surrounded_by_json_whitespace_is_accepted(around):
    """Shell and Node writers end files with a newline; the compact-document fast path must not refuse them."""
    before, after = around
    assert parse(before + _json(_envelope()) + after, "json", group="main", stem="x").type == "task"


@pytest.mark.parametrize("after", [b"\x0b", "\u00a0".encode(), b"\x0c"])
def test_json_followed_by_non_json_whitespace_is_rejected(after):
    with pytest.raises(InvalidMessage, match="Extra data"):
        parse(_json(_envelope()) + after, "json", group="main", stem="x")


# -- msgpack strictness -----------------------------------------------------------------------


def test_msgpack_ext_type_rejected():
    data = msgpack.packb({"type": "task", "payload": msgpack.ExtType(5, b"abc")})
    with pytest.raises(InvalidMessage, match="extension type 5"):
        parse(data, "msgpack", group="main", stem="x")


def test_msgpack_timestamp_ext_type_rejected():
    # The timestamp extension (type -1) is an extension type too: JSON cannot carry it.
    data = msgpack.packb({"type": "task", "payload": msgpack.Timestamp(1, 0)})
    with pytest.raises(InvalidMessage):
        parse(data, "msgpack", group="main", stem="x")


def test_msgpack_trailing_bytes_rejected():
    data = msgpack.packb(_envelope()) + b"\x00"
    with pytest.raises(InvalidMessage, match="trailing bytes"):
        parse(data, "msgpack", group="main", stem="x")


@pytest.mark.parametrize("key", [1, b"bytes-key", 1.5, None])
def test_msgpack_non_string_map_keys_rejected(key):
    data = msgpack.packb({"type": "task", "payload": {key: 1}}, use_bin_type=True)
    with pytest.raises(InvalidMessage):
        parse(data, "msgpack", group="main", stem="x")


def test_msgpack_binary_values_rejected():
    data = msgpack.packb({"type": "task", "payload": {"blob": b"\x00\x01"}}, use_bin_type=True)
    with pytest.raises(InvalidMessage, match="binary"):
        parse(data, "msgpack", group="main", stem="x")


def test_msgpack_nan_rejected():
    data = msgpack.packb({"type": "task", "payload": float("nan")})
    with pytest.raises(InvalidMessage, match="NaN"):
        parse(data, "msgpack", group="main", stem="x")
    with pytest.raises(InvalidMessage):
        parse(msgpack.packb([float("-inf")]), "msgpack", group="main", stem="x")


def test_msgpack_truncated_rejected():
    full = msgpack.packb(_envelope())
    for cut in (0, 1, len(full) // 2, len(full) - 1):
        with pytest.raises(InvalidMessage, match="invalid msgpack"):
            parse(full[:cut], "msgpack", group="main", stem="x")


def test_msgpack_invalid_utf8_string_rejected():
    with pytest.raises(InvalidMessage):
        parse(b"\x81\xa1a\xa1\xff", "msgpack", group="main", stem="x")


def test_msgpack_duplicate_keys_rejected():
    # {"type": "task", "payload": 1, "type": "evil"} -- the module docstring rejects duplicate keys
    data = b"\x83\xa4type\xa4task\xa7payload\x01\xa4type\xa4evil"
    with pytest.raises(InvalidMessage, match="duplicate"):
        parse(data, "msgpack", group="main", stem="x")


def test_msgpack_nesting_limit_matches_json():
    def nested(levels: int) -> list:
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    assert decode(msgpack.packb(nested(MAX_DEPTH)), "msgpack") == nested(MAX_DEPTH)
    with pytest.raises(InvalidMessage, match="nested deeper"):
        parse(msgpack.packb(nested(MAX_DEPTH + 1)), "msgpack", group="main", stem="x")


def test_msgpack_hostile_nesting_rejected():
    with pytest.raises(InvalidMessage):
        parse(b"\x91" * 100_000 + b"\xc0", "msgpack", group="main", stem="x")


def test_msgpack_huge_declared_length_rejected():
    with pytest.raises(InvalidMessage):
        parse(b"\xdd\xff\xff\xff\xff", "msgpack", group="main", stem="x")


def test_unknown_format_rejected():
    with pytest.raises(InvalidMessage, match="unknown format"):
        decode(b"{}", "xml")
    with pytest.raises(InvalidMessage, match="unknown format"):
        encode({}, "xml")


# -- encoding and round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_round_trip(fmt):
    env = build_envelope("main", "task", {"n": 1, "s": "ünïcode", "l": [1.5, None, True]},
                         requires_ack=True, reply_to="group1")
    env["custom"] = {"kept": True}
    data = encode(env, fmt)
    assert isinstance(data, bytes)
    assert decode(data, fmt) == env
    msg = parse(data, fmt, group="main", stem="ignored")
    assert msg.id == env["id"]
    assert msg.extra == {"custom": {"kept": True}}
    assert to_wire(msg) == env
    assert parse(encode(to_wire(msg), fmt), fmt, group="main", stem="ignored") == msg


def test_json_encoding_is_compact_utf8():
    assert encode({"a": "é"}, "json") == '{"a":"é"}'.encode()


@pytest.mark.parametrize(
    ("fmt", "value"),
    [("json", {1, 2}), ("json", object()), ("json", {"a": float("nan")}), ("json", {(1, 2): "tuple key"}),
     ("msgpack", {1, 2}), ("msgpack", object())],
)
def test_encode_unrepresentable_raises_invalid_message(fmt, value):
    with pytest.raises(InvalidMessage, match="cannot encode"):
        encode(value, fmt)


def test_msgpack_encode_int_overflow_raises_invalid_message():
    with pytest.raises(InvalidMessage):
        encode({"n": 2**70}, "msgpack")


def test_to_message_accepts_decoded_objects_directly():
    msg = to_message({"type": "task", "payload": [1]}, group="main", stem="s-1", delivery_count=4)
    assert (msg.id, msg.delivery_count, msg.payload) == ("s-1", 4, [1])


def test_message_is_frozen():
    msg = to_message({"type": "task", "payload": 1}, group="main", stem="s")
    with pytest.raises(AttributeError):
        msg.id = "other"  # type: ignore[misc]
