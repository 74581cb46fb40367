"""A handler module that fails to import, and leaves a line per attempt (for boot-failure counts).

Each import appends this process's pid to ``$IPCPOOL_TEST_RECORDS/boot-attempts.txt``
before raising, so a test counts how many times workers tried to boot.
"""

import os

_records = os.environ.get("IPCPOOL_TEST_RECORDS")
if _records:
    _fd = os.open(os.path.join(_records, "boot-attempts.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(_fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(_fd)
raise ImportError("boot_counter: this module fails on purpose")


def handle(message):  # pragma: no cover - never reached
    return None
