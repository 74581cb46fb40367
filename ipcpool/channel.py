"""The supervisor's ends of a worker's two pipes, never blocking the loop.

multiprocessing's ``Connection`` blocks. A send to a worker that stopped
reading (SIGSTOPped, or deep in a handler) whose pipe is full would stop the
supervisor's single loop, and with it the supervision of every other worker
and the kill that would free this one; a read of half a frame would wait
for the rest. So the supervisor writes frames without blocking, keeping what
did not fit in an outbox that is flushed when epoll says the pipe has room,
and reads whatever is there, keeping a partial frame for later.

The frames are multiprocessing's own (a 4-byte big-endian signed length, or
-1 and an 8-byte length, then a pickle), so the worker keeps an ordinary
blocking ``Connection`` on its ends.
"""

from __future__ import annotations

import os
import pickle
import struct
from multiprocessing.connection import Connection
from typing import Any

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_READ_SIZE = 65536


def frame(obj: Any) -> bytes:
    """One message as multiprocessing's Connection.recv expects it."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(len(body)) + body
    return _HEADER.pack(len(body)) + body


class TaskChannel:
    """Commands to one worker; ``send`` never blocks (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._outbox = bytearray()
        self.open = True

    @property
    def pending(self) -> bool:
        """Bytes wait for room in the pipe (the loop then waits for it to be writable)."""
        return bool(self._outbox)

    def send(self, obj: Any) -> bool:
        """Queue one command; False when the worker's end is gone."""
        if not self.open:
            return False
        data = frame(obj)
        if self._outbox:
            self._outbox += data
            return True
        written = self._write(data)
        if written < len(data) and self.open:
            self._outbox += memoryview(data)[written:]
        return self.open

    def flush(self) -> bool:
        """Write what the outbox holds, as far as the pipe takes it; False when closed."""
        if self._outbox and self.open:
            written = self._write(self._outbox)
            del self._outbox[:written]
        return self.open

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:  # EPIPE: the worker is gone
            self.open = False
            self._outbox.clear()
            return 0

    def close(self) -> None:
        self.open = False
        self._outbox.clear()
        try:
            self.conn.close()
        except OSError:
            pass


class ResultChannel:
    """Reports from one worker; ``read`` returns what has fully arrived, never waiting."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._inbox = bytearray()
        self.open = True  # False once the worker's end is closed (EOF) or broken

    def read(self) -> list[Any]:
        """Every complete message now in the pipe (level-triggered epoll brings us back for more)."""
        if not self.open:
            return []
        while True:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self.open = False
                break
            if not chunk:
                self.open = False
                break
            self._inbox += chunk
            if len(chunk) < _READ_SIZE:  # a short read: the pipe is empty for now
                break
        return self._frames()

    def _frames(self) -> list[Any]:
        inbox, out, at = self._inbox, [], 0
        end = len(inbox)
        while end - at >= 4:
            (size,) = _HEADER.unpack_from(inbox, at)
            start = at + 4
            if size == -1:
                if end - start < 8:
                    break
                (size,) = _LONG_HEADER.unpack_from(inbox, start)
                start += 8
            if end - start < size:
                break
            out.append(pickle.loads(inbox[start:start + size]))
            at = start + size
        if at:
            del inbox[:at]
        return out

    def close(self) -> None:
        self.open = False
        try:
            self.conn.close()
        except OSError:
            pass
