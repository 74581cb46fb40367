"""This root's consumer name in the streams' consumer groups: its host name and an id kept on the root."""

from __future__ import annotations

import os
import socket

from ipcpool.localroot import STATE_DIR

CONSUMER_FILE = "consumer"  # in <root>/.ipcpool/: this root's consumer id


def consumer_name(root: str, *, fsync: bool = False) -> str:
    """The host name and a random id kept in ``<root>/.ipcpool/consumer``, made by the root's first start.

    A supervisor restarted on its root has the same name, so it takes back its
    own entries at once; any other root has another, whatever its path and its
    host's name (containers with one fixed host name and the image's root path,
    each on a volume of its own, never share a name: restarting one cannot take
    what the other's workers hold). One root is one supervisor (its lock).
    """
    path = os.path.join(root, STATE_DIR, CONSUMER_FILE)
    try:
        with open(path, encoding="ascii") as handle:
            token = handle.read().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        token = ""
    if not (len(token) == 16 and all(c in "0123456789abcdef" for c in token)):
        token = os.urandom(8).hex()
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{token}\n".encode())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return f"{socket.gethostname()}:{token}"
