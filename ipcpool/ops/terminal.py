"""Text a message's writer chose, made safe to print on an operator's terminal.

Types, ids (a legacy message's id is its file name), bodies that are not JSON,
handler tracebacks and what external heartbeats say are all written by
someone else; printed raw, an escape sequence in them could clear the screen,
retitle the window, write the clipboard (OSC 52) or hide and reorder text
(a bidi override: trojan source). :func:`printable` shows every such character
as an escape instead: ``\\x1b``, ``\\r``, ``\\u009b``, ``\\u202e``. Every command
that prints such text goes through it (``errors``, ``status``, ``top``, ``health``,
and the workers' process titles); ``--json`` output is escaped by JSON itself.
"""

from __future__ import annotations

import re

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_CONTROLS = "\x00-\x09\x0b-\x1f\x7f-\x9f"  # C0 but the newline, DEL, C1 (0x80-0x9f: CSI, OSC in one character)
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # embeddings, overrides, isolates, marks
_SEPARATORS = "\u2028\u2029"  # Unicode's line and paragraph separators
_SURROGATES = "\ud800-\udfff"  # undecodable bytes of a file name: they cannot even be encoded for output
_UNSAFE_BUT_NEWLINE = re.compile(f"[{_CONTROLS}{_BIDI}{_SEPARATORS}{_SURROGATES}]")
_UNSAFE = re.compile(f"[\n{_CONTROLS}{_BIDI}{_SEPARATORS}{_SURROGATES}]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")


def printable(text: object, *, newlines: bool = False) -> str:
    """``str(text)`` with every control, bidi and separator character escaped; with ``newlines``, a
    newline stays one (a body or a traceback of several lines), else it is shown as ``\\n``."""
    return (_UNSAFE_BUT_NEWLINE if newlines else _UNSAFE).sub(_escape, str(text))
