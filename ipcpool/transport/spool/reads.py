"""Safe reads of claimed files: no links, no FIFOs or devices, size-capped, one read.

And the read lease that says whether a handled file may be reused for the
next ack: only when nothing anywhere can still write to it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass

from ipcpool.errors import InvalidMessage
from ipcpool.message import SNIFF_BYTES
from ipcpool.transport.spool.layout import PROCESSING, Folders
from ipcpool.transport.spool.writes import _OPEN_READ

_F_SETLEASE: int | None = getattr(fcntl, "F_SETLEASE", None)  # Linux only: no lease, no reuse


@dataclass(slots=True)  # not frozen: built once per delivery, and frozen init costs a setattr per field
class ReadResult:
    data: bytes
    mtime: float
    size: int
    recycle: int | None = None  # its permission bits when it may become our next ack (see _recyclable)


class Reader:
    """Reading what the supervisor claimed, safely and once."""

    def __init__(self, folders: Folders, *, max_message_bytes: int = 1024 * 1024) -> None:
        self.folders = folders
        self.path = folders.path
        self.max_message_bytes = max_message_bytes

    def read_claimed(self, group: str, name: str) -> ReadResult:
        """Read a claimed file safely: no symlinks, only regular single-link files, size-capped.

        Raises FileNotFoundError when it vanished, InvalidMessage (with the
        reason) when it must not be read.
        """
        return self._read(self.path(group, PROCESSING, name), lease=True)

    def read_queued(self, group: str, name: str) -> ReadResult:
        """The same read of a file still in its inbox (the supervisor reads a sequence key before it claims;
        never a lease: the file is not ours yet)."""
        return self._read(self.folders.inbox_path(group, name), lease=False)

    def _read(self, path: str, *, lease: bool) -> ReadResult:
        try:
            fd = os.open(path, _OPEN_READ)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidMessage("refused: a symbolic link, not a regular file") from exc
            if exc.errno == errno.ENXIO:
                raise InvalidMessage("refused: a socket or device, not a regular file") from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise InvalidMessage(_unreadable(path)) from exc
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidMessage(f"refused: a {_kind(st.st_mode)}, not a regular file")
            if st.st_nlink > 1:
                raise InvalidMessage(f"refused: a hard link ({st.st_nlink} links); publish by copy, then rename")
            limit = self.max_message_bytes
            if st.st_size > limit:
                error = InvalidMessage(
                    f"too large: {st.st_size} bytes, the limit is {limit} ([spool] max_message_bytes)")
                error.head = os.read(fd, SNIFF_BYTES)
                raise error
            # One read, sized by fstat (not a 1 MiB buffer per message); a short read
            # of a regular file is its end.
            asked = min(st.st_size + 1, limit + 1)
            data = os.read(fd, asked)
            if len(data) == asked:  # it grew after fstat (a direct writer): read on, up to the limit
                data = self._read_rest(fd, data, limit)
            return ReadResult(data, st.st_mtime, len(data), self._recyclable(fd, st) if lease else None)
        finally:
            os.close(fd)

    @staticmethod
    def _read_rest(fd: int, data: bytes, limit: int) -> bytes:
        chunks = [data]
        total = len(data)
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            error = InvalidMessage(f"too large: more than {limit} bytes ([spool] max_message_bytes)")
            error.head = chunks[0][:SNIFF_BYTES]
            raise error
        return b"".join(chunks)

    def _recyclable(self, fd: int, st: os.stat_result) -> int | None:
        """The file's permission bits if its inode may be reused for our next ack, else None.

        Only in private mode, only for a file of our uid that nobody else may
        open (no group or other bits; one link is checked already), and only
        when no descriptor or mapping anywhere can still write to it: a read
        lease is granted only then. After that, processing/ (ours alone) keeps
        new openers out. Anything unusual (no leases here) means no reuse.
        """
        mode = stat.S_IMODE(st.st_mode)
        folders = self.folders
        if folders.shared or st.st_uid != folders.euid or mode & 0o077 or folders.staging is None or \
                _F_SETLEASE is None:
            return None
        try:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # a writer still holds it open (EAGAIN), or leases are unsupported
            return None
        try:
            # Not left to close(): a handler's thread that forks meanwhile would keep the
            # open file, and its lease, alive; our own open of the spare would then break
            # it, and SIGIO (the lease-break signal) kills the worker.
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        except OSError:
            return None
        return mode


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"


def _unreadable(path: str) -> str:
    """Why a writer's file cannot be read, with what it is and the fix (a refusal's reason, in its nack)."""
    try:
        st = os.lstat(path)
    except OSError:
        return "refused: not readable by the supervisor's user (check the writer's umask)"
    return (f"refused: not readable by the supervisor's user: the file is {stat.S_IMODE(st.st_mode):04o}, owned by "
            f"uid {st.st_uid} gid {st.st_gid}; write it group-readable (0640, umask 027) in a shared root, or "
            f"world-readable (0644) by another user into a private one")

