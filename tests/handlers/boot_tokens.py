"""A handler module that fails to import once per token file, then imports fine (and records).

Each import takes (unlinks) one file from ``$IPCPOOL_TEST_RECORDS/boot-fail-tokens/``
and fails if it got one: a test decides exactly how many boots fail, and when.
"""

import os

from recorder import record  # noqa: F401 - the handler this module offers once it imports

_records = os.environ.get("IPCPOOL_TEST_RECORDS")
_tokens = os.path.join(_records, "boot-fail-tokens") if _records else None
if _tokens and os.path.isdir(_tokens):
    for _name in sorted(os.listdir(_tokens)):
        try:
            os.unlink(os.path.join(_tokens, _name))
        except FileNotFoundError:  # another worker took it
            continue
        raise ImportError(f"boot_tokens: failing on purpose (token {_name})")
