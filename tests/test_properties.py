"""Property tests: whatever bytes arrive, decode + to_message give a Message or raise InvalidMessage, nothing else."""

from __future__ import annotations

import json
import re

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wire import to_wire

from ipcpool.errors import InvalidMessage
from ipcpool.message import MAX_INT_DIGITS, Message, build_envelope, decode, encode, to_message

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run: deterministic
    database=None,  # and nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no database reuse, no slow "explain" phase
)

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
ALNUM = "abcXYZ0189"

# -- strategies -----------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**45), max_value=10**45)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

type_names = st.sampled_from(["task", "command", "response", "error", "heartbeat", "legacy", "a.b:c-d"])
safe_ids = st.builds(str.__add__, st.text(ALNUM, min_size=1, max_size=1), st.text(ALNUM + "_-", max_size=12))
id_names = safe_ids | st.sampled_from(["../x", "a/b", "a\x00b", ""])
group_names = st.sampled_from(["main", "other", "main\n", ""])
type_values = type_names | json_values
id_values = id_names | json_values
group_values = group_names | json_values
envelopes = st.fixed_dictionaries(
    {"type": type_values, "payload": json_values},
    optional={
        "id": id_values,
        "groupFolder": group_values,
        "timestamp": st.text(max_size=30) | json_values,
        "requiresAck": st.booleans() | json_values,
        "replyTo": group_values,
        "custom": json_values,
    },
)

msgpack_keys = (
    st.text(max_size=10)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=5)
    | st.booleans()
    | st.none()
    | st.tuples(st.integers(0, 3))
)
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=10))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**33), st.integers(0, 999_999_999))
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(msgpack_keys, children, max_size=4),
    max_leaves=10,
)
msgpack_envelopes = st.fixed_dictionaries(
    {"type": type_names | msgpack_values, "payload": msgpack_values},
    optional={"id": id_names | msgpack_values, "groupFolder": group_names | msgpack_values,
              "requiresAck": st.booleans() | msgpack_values, "custom": msgpack_values},
)

# JSON-carriable payloads that both codecs must round-trip exactly
plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
roundtrip_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | plain_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(plain_text, children, max_size=4),
    max_leaves=10,
)


def _parse_or_invalid(data: bytes, fmt: str) -> Message | None:
    try:
        result = to_message(decode(data, fmt), group="main", stem="x")
    except InvalidMessage:
        return None
    assert isinstance(result, Message)
    return result


def _json_bytes(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# -- bytes --------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_json(data):
    _parse_or_invalid(data, "json")


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_msgpack(data):
    _parse_or_invalid(data, "msgpack")


@SETTINGS
@given(st.integers(0, 3000), st.sampled_from(["[", "{\"a\":", "[{\"a\":"]), st.booleans())
def test_deep_nesting_never_escapes(depth, opener, closed):
    body = opener * depth
    if closed:
        closer = {"[": "]", "{\"a\":": "}", "[{\"a\":": "}]"}[opener]
        body += "1" + closer * depth
    _parse_or_invalid(body.encode(), "json")
    _parse_or_invalid(b"\x91" * depth + b"\xc0", "msgpack")
    _parse_or_invalid(b"\x81\xa1a" * depth + b"\x01", "msgpack")


# -- JSON values ----------------------------------------------------------------------------------------------


@SETTINGS
@given(json_values, st.booleans())
def test_arbitrary_json_values(value, ascii_only):
    _parse_or_invalid(_json_bytes(value, ascii_only), "json")


@SETTINGS
@given(envelopes, st.booleans())
def test_arbitrary_json_envelopes(envelope, ascii_only):
    message = _parse_or_invalid(_json_bytes(envelope, ascii_only), "json")
    if message is None:
        return
    # and what is accepted is safe: the arrival group, a file-name-safe id, no NaN, no huge ints
    assert message.group == "main"
    assert SAFE_ID.fullmatch(message.id), repr(message.id)
    assert not isinstance(message.payload, float) or message.payload == message.payload
    if isinstance(message.payload, int) and not isinstance(message.payload, bool):
        assert len(str(abs(message.payload))) <= MAX_INT_DIGITS


@SETTINGS
@given(envelopes, st.data())
def test_truncated_or_corrupted_json_envelopes(envelope, data):
    body = bytearray(_json_bytes(envelope, True))
    if body and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _parse_or_invalid(bytes(body[:cut]), "json")


# -- msgpack values -----------------------------------------------------------------------------------------------


@SETTINGS
@given(msgpack_values, st.booleans())
def test_arbitrary_msgpack_values(value, use_bin_type):
    _parse_or_invalid(msgpack.packb(value, use_bin_type=use_bin_type), "msgpack")


@SETTINGS
@given(msgpack_envelopes)
def test_arbitrary_msgpack_envelopes(envelope):
    _parse_or_invalid(msgpack.packb(envelope, use_bin_type=True), "msgpack")


@SETTINGS
@given(msgpack_envelopes, st.data())
def test_truncated_or_corrupted_msgpack_envelopes(envelope, data):
    body = bytearray(msgpack.packb(envelope, use_bin_type=True))
    if body and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    tail = data.draw(st.binary(max_size=3))
    _parse_or_invalid(bytes(body[:cut]) + tail, "msgpack")


@SETTINGS
@given(msgpack_envelopes)
def test_accepted_msgpack_messages_are_json_carriable(envelope):
    # the decoder rejects binary values "because JSON cannot carry them": so whatever it accepts, JSON can carry
    message = _parse_or_invalid(msgpack.packb(envelope, use_bin_type=True), "msgpack")
    if message is not None:
        assert SAFE_ID.fullmatch(message.id), repr(message.id)
        encode(to_wire(message), "json")


# -- round trips -------------------------------------------------------------------------------------------------------


@SETTINGS
@given(roundtrip_values, st.sampled_from(["json", "msgpack"]), st.booleans(),
       st.dictionaries(st.sampled_from(["priority", "traceId", "custom"]), roundtrip_values, max_size=3))
def test_round_trip_any_payload(payload, fmt, requires_ack, extra):
    envelope = build_envelope("main", "task", payload, requires_ack=requires_ack)
    envelope.update(extra)
    message = to_message(decode(encode(envelope, fmt), fmt), group="main", stem="ignored")
    assert message.payload == payload
    assert message.requires_ack is requires_ack
    assert message.extra == extra
    assert to_wire(message) == envelope
