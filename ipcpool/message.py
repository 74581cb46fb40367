"""Envelopes, message types and the two wire codecs (JSON and msgpack).

The wire keys are the original system's (``groupFolder``, ``requiresAck``,
``replyTo``) so that its other writers keep working; handlers see a
:class:`Message` with Python names instead. Decoding is strict on purpose:
duplicate keys, NaN, huge integers, msgpack extension types and trailing bytes
are all rejected with a reason, because the bytes come from other processes.
It stays one module past 500 lines: the codecs, the envelope's checks and the
summaries read off bytes that do not decode are one contract with writers.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ipcpool.errors import InvalidMessage

# \Z, not $: $ would also match before a trailing newline.
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MESSAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
EXTENSIONS = {".json": "json", ".msgpack": "msgpack"}
FORMATS = ("json", "msgpack")
MAX_DEPTH = 64
MAX_INT_DIGITS = 40
ORDERING_KEY = "orderingKey"  # the optional wire key of a message's sequence (ipcpool.ordering)
MAX_ORDERING_KEY = 200

_ENVELOPE_KEY_SET = frozenset(("id", "type", "groupFolder", "payload", "timestamp", "requiresAck", "replyTo"))


class IPCMessageType(enum.StrEnum):
    """The original system's message types; any other type string is allowed too."""

    TASK = "task"
    COMMAND = "command"
    RESPONSE = "response"
    ERROR = "error"
    HEARTBEAT = "heartbeat"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Message:
    """What a handler receives: one decoded message and where it came from."""

    id: str
    type: str
    group: str
    payload: Any
    timestamp: str
    requires_ack: bool = False
    reply_to: str | None = None
    delivery_count: int = 1
    legacy: bool = False  # not an envelope: the whole body is the payload (type: its own string type, or "legacy")
    extra: dict[str, Any] = field(default_factory=dict)
    inbox: str = "messages"  # the group's folder it arrived in: messages, or tasks


def now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a Z, as JavaScript's toISOString()."""
    now = time.time()
    seconds = int(now)
    return f"{_iso_second(seconds)}.{int((now - seconds) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` but without building a UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_envelope(
    group: str,
    type_: str,
    payload: Any,
    *,
    requires_ack: bool = False,
    reply_to: str | None = None,
    message_id: str | None = None,
    ordering_key: str | None = None,
) -> dict[str, Any]:
    """A fresh wire envelope, validated as the receiver will validate it."""
    check_group_name(group)
    if reply_to is not None:
        check_group_name(reply_to)
    type_ = str(type_)
    _check_type(type_)
    if message_id:
        _check_id(message_id)
    if not isinstance(requires_ack, bool):
        raise InvalidMessage(f"invalid envelope: requiresAck must be true or false, got {_short(requires_ack)}")
    envelope: dict[str, Any] = {
        "id": message_id or new_id(),
        "type": type_,
        "groupFolder": group,
        "payload": payload,
        "timestamp": now_iso(),
        "requiresAck": requires_ack,
    }
    if reply_to is not None:
        envelope["replyTo"] = reply_to
    if ordering_key is not None:
        envelope[ORDERING_KEY] = check_ordering_key(ordering_key)
    return envelope


def check_group_name(name: str) -> str:
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise InvalidMessage(
            f"invalid group name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def format_for(name: str) -> str | None:
    """The codec for a message file name, or None when the extension is not ours."""
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:]) if dot >= 0 else None  # one lookup: no extension has a dot inside


def extension_for(fmt: str) -> str:
    return ".json" if fmt == "json" else ".msgpack"


# -- encoding ---------------------------------------------------------------


_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # one, not one per call


def encode(obj: Any, fmt: str) -> bytes:
    """Serialise a wire object; raises InvalidMessage when it cannot be represented."""
    try:
        if fmt == "json":
            return _JSON_ENCODER.encode(obj).encode()
        if fmt == "msgpack":
            return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"cannot encode as {fmt}: {exc}") from exc
    raise InvalidMessage(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# -- decoding ---------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(f"invalid JSON: {name} is not allowed")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidMessage(f"invalid JSON: integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidMessage("invalid JSON: number out of range")
    return value


def _unique_keys_for(fmt: str) -> Any:
    def unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[Any] = set()
            for key, _value in pairs:
                if key in seen:
                    raise InvalidMessage(f"invalid {fmt}: duplicate key {key!r}")
                seen.add(key)
        return result

    return unique_keys


_unique_keys = _unique_keys_for("JSON")


_JSON_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def _nesting_depth_ok(data: bytes) -> bool:
    """A cheap pre-check so hostile nesting never reaches the recursive parser."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return True
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


_JSON_WHITESPACE = " \t\n\r"  # JSON's own (str.isspace would also pass characters the parser rejects)


def _decode_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if not _nesting_depth_ok(data):
        raise InvalidMessage(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        # A compact document (what senders write) is scanned once; JSONDecoder.decode
        # would run two whitespace regexes around it. Anything else (surrounding
        # whitespace, an error) takes the full path, which also says where it failed.
        try:
            obj, end = _JSON_DECODER.scan_once(text, 0)
        except StopIteration:
            end = -1
        if end == len(text) or (end > 0 and not text[end:].strip(_JSON_WHITESPACE)):  # a final newline is common
            return obj
        return _JSON_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(f"invalid JSON: {exc}") from exc


def _reject_ext(code: int, _data: bytes) -> Any:
    raise InvalidMessage(f"invalid msgpack: extension type {code} is not allowed")


_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_msgpack_value(value: Any, depth: int = 1) -> None:
    """Only what JSON can carry, nested no deeper than JSON allows."""
    if depth > MAX_DEPTH:
        raise InvalidMessage(f"invalid msgpack: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMessage(f"invalid msgpack: map key {key!r} is not a string")
            _check_msgpack_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_msgpack_value(item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidMessage("invalid msgpack: NaN and Infinity are not allowed")
    elif isinstance(value, bytes):
        raise InvalidMessage("invalid msgpack: binary values are not allowed (JSON cannot carry them)")
    elif not isinstance(value, _JSON_SCALARS):
        raise InvalidMessage(f"invalid msgpack: {type(value).__name__} values are not allowed (JSON cannot carry them)")


_MSGPACK_UNIQUE_KEYS = _unique_keys_for("msgpack")


def _decode_msgpack(data: bytes) -> Any:
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
            object_pairs_hook=_MSGPACK_UNIQUE_KEYS,
        )
    except InvalidMessage:
        raise
    except msgpack.ExtraData as exc:
        raise InvalidMessage("invalid msgpack: trailing bytes after the message") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidMessage(f"invalid msgpack: {reason}") from exc
    _check_msgpack_value(value)
    return value


def decode(data: bytes, fmt: str) -> Any:
    """Bytes to a wire object (not yet validated as an envelope)."""
    if fmt == "json":
        return _decode_json(data)
    if fmt == "msgpack":
        return _decode_msgpack(data)
    raise InvalidMessage(f"unknown format {fmt!r}")


# -- validation -------------------------------------------------------------


def is_envelope(obj: Any) -> bool:
    """The original system's rule: an object with a type and a payload."""
    return isinstance(obj, dict) and "type" in obj and "payload" in obj


_MISSING = object()


def _check_type(type_: Any) -> None:
    if not isinstance(type_, str) or not TYPE_NAME.match(type_):
        raise InvalidMessage(
            f"invalid envelope: type must be a short name of letters, digits, '_', '.', ':' or '-', got {type_!r}"
        )


def _check_id(message_id: Any) -> None:
    if not isinstance(message_id, str) or not MESSAGE_ID.match(message_id):
        raise InvalidMessage(
            f"invalid envelope: id must be 1-128 letters, digits, '_' or '-', got {_short(message_id)}"
        )


def check_ordering_key(key: Any) -> str:
    """A valid ``orderingKey`` (a string of 1-200 characters), or InvalidMessage with the reason."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ORDERING_KEY:
        raise InvalidMessage(f"invalid envelope: orderingKey must be a string of 1-{MAX_ORDERING_KEY} characters, "
                             f"got {_short(key)}")
    return key


def _check_envelope_fields(obj: dict[str, Any]) -> None:
    # The common case is tested inline (once per delivery); the helpers raise with the reason.
    type_ = obj.get("type")
    if type(type_) is not str or not TYPE_NAME.match(type_):
        _check_type(type_)
    # A missing id is allowed: to_message falls back to the file's stem.
    message_id = obj.get("id", _MISSING)
    if message_id is not _MISSING and (type(message_id) is not str or not MESSAGE_ID.match(message_id)):
        _check_id(message_id)
    if "requiresAck" in obj and not isinstance(obj["requiresAck"], bool):
        raise InvalidMessage(f"invalid envelope: requiresAck must be true or false, got {_short(obj['requiresAck'])}")
    if "timestamp" in obj and not isinstance(obj["timestamp"], str):
        raise InvalidMessage(f"invalid envelope: timestamp must be a string, got {_short(obj['timestamp'])}")
    if "groupFolder" in obj and not isinstance(obj["groupFolder"], str):
        raise InvalidMessage(f"invalid envelope: groupFolder must be a string, got {_short(obj['groupFolder'])}")
    reply_to = obj.get("replyTo")
    if reply_to is not None and (not isinstance(reply_to, str) or not GROUP_NAME.match(reply_to)):
        raise InvalidMessage(f"invalid envelope: replyTo must be a group name, got {_short(reply_to)}")
    if ORDERING_KEY in obj:
        check_ordering_key(obj[ORDERING_KEY])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_message(obj: Any, *, group: str, stem: str, delivery_count: int = 1, inbox: str = "messages") -> Message:
    """Validate a decoded wire object that arrived in ``group`` as file ``stem.*``.

    Non-envelopes are legacy messages: the whole body is the payload and the id
    is the file's stem. A legacy body with a string ``type`` of its own (the
    original system's task commands: ``{"type": "schedule_task", ...}``) keeps
    it as its type, so the handler configured for that type takes it (else
    ``legacy``, else ``"*"``). An envelope that names another group is rejected.
    """
    if not is_envelope(obj):
        own = obj.get("type") if isinstance(obj, dict) else None
        return Message(
            id=stem, type=own if isinstance(own, str) and TYPE_NAME.match(own) else "legacy", group=group,
            payload=obj, timestamp=now_iso(), delivery_count=delivery_count, legacy=True, inbox=inbox,
        )
    _check_envelope_fields(obj)
    claimed = obj.get("groupFolder")
    if claimed is not None and claimed != group:
        raise InvalidMessage(f"group mismatch: envelope names group {_short(claimed)} but arrived in {group!r}")
    message_id = obj.get("id")
    if message_id is None:
        if not MESSAGE_ID.match(stem):
            raise InvalidMessage(f"invalid envelope: no id, and the file name {stem!r} is not a usable id")
        message_id = stem
    extra = {} if obj.keys() <= _ENVELOPE_KEY_SET else \
        {key: value for key, value in obj.items() if key not in _ENVELOPE_KEY_SET}
    return Message(
        id=message_id,
        type=obj["type"],
        group=group,
        payload=obj["payload"],
        timestamp=obj.get("timestamp") or now_iso(),
        requires_ack=bool(obj.get("requiresAck", False)),
        reply_to=obj.get("replyTo"),
        delivery_count=delivery_count,
        extra=extra,
        inbox=inbox,
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """What can be said of a message that never became a :class:`Message` (for records and nacks)."""

    id: str | None
    type: str | None
    requires_ack: bool = False
    reply_to: str | None = None
    timestamp: str | None = None
    decoded: bool = True  # False: all of this was read off a file name or a file's first bytes

    @property
    def shown_id(self) -> str:
        """For a log line: never ``id=None``."""
        return self.id or "unknown"

    @property
    def shown_type(self) -> str:
        """For a log line: never ``type=None`` (``unknown``, as /metrics labels it)."""
        return self.type or "unknown"

    @property
    def wants_answer(self) -> bool:
        """A sender may be waiting: for its ack, or for a response."""
        return self.requires_ack or self.reply_to is not None


def summarize(obj: Any, stem: str) -> Summary:
    """The id, type and answer wishes a decoded object states, where they are usable; never raises.

    Without a usable id of its own the file's stem stands in, as it does for
    legacy messages (senders name files after ids).
    """
    fallback = stem if MESSAGE_ID.match(stem) else None
    if not isinstance(obj, dict):
        return Summary(fallback, "legacy")
    message_id = obj.get("id")
    if not (isinstance(message_id, str) and MESSAGE_ID.match(message_id)):
        message_id = fallback
    type_ = obj.get("type")
    if not is_envelope(obj) and not (isinstance(type_, str) and TYPE_NAME.match(type_)):
        type_ = "legacy"
    reply_to = obj.get("replyTo")
    timestamp = obj.get("timestamp")
    return Summary(
        id=message_id,
        type=type_[:64] if isinstance(type_, str) else None,
        requires_ack=obj.get("requiresAck") is True,
        reply_to=reply_to if isinstance(reply_to, str) and GROUP_NAME.match(reply_to) else None,
        timestamp=timestamp if isinstance(timestamp, str) else None,
    )


SNIFF_BYTES = 65536  # how much of a message that cannot be decoded is read to find its id and type
_SNIFF_JSON = re.compile(rb'"(id|type|replyTo)"\s*:\s*"([A-Za-z0-9_.:-]{1,128})"|"(requiresAck)"\s*:\s*(true)')


def sniff(head: bytes, fmt: str | None, stem: str) -> Summary:
    """What a message that cannot be decoded (cut short, malformed, too large) says of itself in its
    first bytes: the first ``id``, ``type``, ``replyTo`` and ``requiresAck`` found, where usable.

    Only for records and nacks: nothing here is trusted to route a message.
    """
    found: dict[str, Any] = {}
    if fmt == "json":
        for match in _SNIFF_JSON.finditer(head[:SNIFF_BYTES]):
            key = (match.group(1) or match.group(3)).decode()
            found.setdefault(key, True if match.group(4) else match.group(2).decode())
    elif fmt == "msgpack":
        found = _sniff_msgpack(head[:SNIFF_BYTES])
    if not found:
        return unknown_summary(stem)
    said = summarize(found, stem)
    type_ = found.get("type")  # as found, or None: not summarize()'s "legacy" for a dict without one
    return Summary(said.id, type_ if isinstance(type_, str) and TYPE_NAME.match(type_) else None,
                   said.requires_ack, said.reply_to, decoded=False)


def _sniff_msgpack(head: bytes) -> dict[str, Any]:
    """The top-level map's small fields, read one by one until the bytes run out."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(head) + 1)
    unpacker.feed(head)
    found: dict[str, Any] = {}
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key in ("id", "type", "replyTo", "requiresAck"):
                found[key] = unpacker.unpack()
            else:
                unpacker.skip()
    except Exception:  # noqa: BLE001 - cut short or malformed: what was read so far is all there is
        pass
    return found


def unknown_summary(stem: str) -> Summary:
    """A message not decoded (or not read): only its file name speaks for it."""
    return Summary(stem if MESSAGE_ID.match(stem) else None, None, decoded=False)


def summarize_bytes(data: bytes, fmt: str | None, stem: str) -> Summary:
    """:func:`summarize` of raw bytes: decoded if they decode, else only what the name says."""
    if fmt is None:
        return unknown_summary(stem)
    try:
        return summarize(decode(data, fmt), stem)
    except InvalidMessage:
        return unknown_summary(stem)
