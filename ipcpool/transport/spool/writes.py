"""Atomic writes: a file is written in a temp file, then renamed into place, never seen half-written.

A failed write or fsync (ENOSPC, EIO) removes the temp file and raises, so
nothing partial reaches its folder. ``durability = "power"`` adds an fsync of
the file before the rename and of the folder after it. A handled message's
file may be recycled as the next ack (see ``Claims.complete``): it is
overwritten in private staging and renamed like a fresh temp file.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time

from ipcpool.errors import MessageExists
from ipcpool.ordering import is_marked
from ipcpool.portable import rename_noreplace
from ipcpool.transport.spool.layout import MESSAGES, TMP, Folders

log = logging.getLogger(__name__)

_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_SPARE = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_SPARES = 16  # handled files one process keeps for its next acks (more when messages need none)
PUBLISH_ATTEMPTS = 16  # renames tried while a namesake is claimed or removed between two looks
STAGING_GRACE = 60.0  # seconds a staging file of a pid not known live is kept (a worker newer than the list)


class Writer:
    """Temp-file-then-rename writes into one spool root's folders, and the handled files kept to be reused.

    One per process (each worker builds its own): the temp names, the staging
    token and the spare files are this process's.
    """

    def __init__(self, folders: Folders, *, durability: str = "process") -> None:
        self.folders = folders
        self.fsync = durability == "power"
        self._tmp_counter = 0
        self._pid = os.getpid()
        # Temp names in staging: this process's pid (see prune_staging), a token of this writer's, a counter.
        staging = folders.staging
        self._staging_prefix = f"{staging}/.{self._pid}-{os.urandom(4).hex()}-" if staging else ""
        # Handled message files kept in staging to become the next acks and responses (see keep_spare).
        self._spares: list[tuple[str, int]] = []  # (path, permission bits)

    def _tmp_name(self) -> str:
        """Short and unguessable: never derived from a (possibly long) message name."""
        self._tmp_counter += 1
        return f".{os.getpid()}-{self._tmp_counter}-{os.urandom(6).hex()}.tmp"  # secrets.token_hex(6)

    def _staging_path(self) -> str:
        """A temp file's path in private staging: nobody else can create files there, so a counter is enough
        (after this Spool's own random token: a dead process of the same pid may have left names)."""
        self._tmp_counter += 1
        return f"{self._staging_prefix}{self._tmp_counter}.tmp"

    def write_atomic(self, group: str, sub: str, name: str, data: bytes, *, mode: int | None = None) -> str:
        """Write ``data`` to tmp/, then rename it to ``<sub>/<name>``: never seen partial.

        A failed write or fsync (ENOSPC, EIO) removes the temp file and raises,
        so nothing partial reaches the destination.
        """
        final = self.folders.path(group, sub, name)
        file_mode = self.folders.file_mode(sub) if mode is None else mode
        while self._spares and sub != MESSAGES:
            if self._write_spare(*self._spares.pop(), final, data, file_mode):
                return final
        staging = self.folders.staging if sub != MESSAGES else None
        tmp_path = self._staging_path() if staging else self.folders.path(group, TMP, self._tmp_name())
        fd = os.open(tmp_path, _OPEN_WRITE, file_mode)
        try:
            # Shared: group bits must not depend on the umask (private 0600 only narrows).
            self._fill(fd, data, file_mode if self.folders.shared else None)
            os.rename(tmp_path, final)
        except BaseException:
            unlink_quietly(tmp_path)
            raise
        if self.fsync:
            self.fsync_dir(self.folders.path(group, sub))
        return final

    def _fill(self, fd: int, data: bytes, chmod_to: int | None, *, truncate: bool = False) -> None:
        """Write ``data`` into a temp file (fixing its mode, cutting a reused file to length,
        fsync'd with durability "power"), then close it."""
        try:
            if chmod_to is not None:
                os.fchmod(fd, chmod_to)
            _write_all(fd, data)
            if truncate:
                # After the write, not O_TRUNC at open: shrinking within the file's first
                # block frees nothing, emptying it frees and reallocates it (5x the CPU on ext4).
                os.ftruncate(fd, len(data))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _write_spare(self, spare: str, spare_mode: int, final: str, data: bytes, file_mode: int) -> bool:
        """Overwrite a recycled file in staging and rename it to ``final``; False if the spare was lost.

        Staging is private and the rename atomic, as for a fresh temp file;
        the spare passed :meth:`_recyclable` (nothing else can write to it).
        """
        try:
            fd = os.open(spare, _OPEN_SPARE)
        except OSError:  # pruned meanwhile, or a read-only file: take another, or a fresh file
            unlink_quietly(spare)
            return False
        try:
            self._fill(fd, data, file_mode if spare_mode != file_mode else None, truncate=True)
            os.rename(spare, final)
        except FileNotFoundError:
            unlink_quietly(spare)
            if os.path.isdir(os.path.dirname(final)):
                return False  # the spare went missing: take another, or a fresh file
            raise  # the destination folder is gone: the caller handles it as for a fresh file
        except BaseException:
            unlink_quietly(spare)
            raise
        if self.fsync:
            self.fsync_dir(os.path.dirname(final))
        return True

    def keep_spare(self, source: str, mode: int) -> bool:
        """Move a handled message's file into staging, to become the next ack or response (see Claims.complete);
        False when it is not kept (enough kept, no staging, or the move failed: the caller unlinks it)."""
        staging = self.folders.staging
        if staging is None or len(self._spares) >= MAX_SPARES:
            return False
        self._tmp_counter += 1
        spare = f"{staging}/.{self._pid}-{self._tmp_counter}.spare"
        try:
            os.rename(source, spare)
        except OSError:
            return False  # the source is gone, or staging is (recycling is only an optimisation)
        self._spares.append((spare, mode))
        return True

    def drop_spares(self) -> None:
        """Unlink the files kept for reuse (a worker's clean exit)."""
        while self._spares:
            unlink_quietly(self._spares.pop()[0])

    def prune_staging(self, live_pids: set[int], *, now: float | None = None) -> int:
        """Remove staging files left by processes that are gone (temp files, spares); returns how many.

        Every staging name starts with ``.<pid>-``; a file of a live process
        is kept even when old (a spare's mtime is its message's). So is one
        touched (its ctime: a rename sets it) within STAGING_GRACE: its pid
        may be a worker started after ``live_pids`` was read, mid-write.
        """
        now = time.time() if now is None else now
        if self.folders.staging is None:
            return 0
        removed = 0
        try:
            with os.scandir(self.folders.staging) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return 0
        for name in names:
            pid_text = name[1:].split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) in live_pids:
                continue
            path = f"{self.folders.staging}/{name}"
            try:
                if now - os.lstat(path).st_ctime < STAGING_GRACE:
                    continue
                os.unlink(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("cannot remove staging leftover %s: %s", name, exc)
                continue
            removed += 1
        return removed

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def publish(self, group: str, name: str, data: bytes) -> str:
        """Atomically place a message file in ``<group>/messages/``; never replaces a queued one.

        A file of that name already queued with the same bytes is the same
        message (the ack retry path re-publishes): that is success. With
        other bytes it raises :class:`MessageExists`, never overwrites.
        """
        final = self.folders.path(group, MESSAGES, name)
        tmp_path = self.folders.path(group, TMP, self._tmp_name())
        fd = os.open(tmp_path, _OPEN_WRITE, self.folders.file_mode(MESSAGES))
        try:
            self._fill(fd, data, self.folders.file_mode(MESSAGES) if self.folders.shared else None)
            if is_marked(name):
                stamp_in_order(tmp_path)  # closed by now: by its name, in tmp/ (ours until the rename)
            for _attempt in range(PUBLISH_ATTEMPTS):
                try:
                    rename_noreplace(tmp_path, final)
                    break
                except FileExistsError:
                    same = _same_bytes(final, data)
                    if same is None:
                        continue  # claimed or removed meanwhile: try again
                    if not same:
                        raise MessageExists(group, name) from None
                    unlink_quietly(tmp_path)
                    return final
            else:  # the name kept coming and going under us: never report a publish that did not happen
                raise MessageExists(group, name)
        except BaseException:
            unlink_quietly(tmp_path)
            raise
        if self.fsync:
            self.fsync_dir(self.folders.path(group, MESSAGES))
        return final


_last_stamp = 0


def stamp_in_order(path: str) -> None:
    """Give a message of a sequence a modification time after the last one this process published.

    After a restart or a rescan, a sequence is ordered by modification time then name; the kernel's file
    times are coarse (a few milliseconds), so two messages published one after the other could tie, and a
    tie goes by name (random ids). Strictly rising times keep one writer's order across restarts too.
    """
    global _last_stamp
    now = max(time.time_ns(), _last_stamp + 1000)
    _last_stamp = now
    try:
        os.utime(path, ns=(now, now), follow_symlinks=False)
    except OSError:
        pass  # only a finer order after a restart is lost: the kernel's time stands


def read_regular(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file; None for anything else (gone, a link, a hard link, a FIFO,
    a socket, a directory, unreadable).

    Every open of a spool entry someone else may have planted goes through here or
    :meth:`Reads.read_claimed`: never following a link (which may point anywhere,
    even at the message it is compared with), never blocking (a FIFO's open waits for
    a writer for ever), and checked to be a regular file before one byte is read.
    """
    try:
        fd = os.open(path, _OPEN_READ)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a hard link's other name may be anywhere
            return None
        chunks, total = [], 0
        want = min(st.st_size + 1, limit)  # sized by fstat: no buffer of ``limit`` bytes per read
        while total < limit:
            chunk = os.read(fd, max(1, min(want, limit - total)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = 65536
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _same_content(a: str, b: str, limit: int) -> bool:
    """Whether two spool entries are regular files with the same bytes; anything else is "different"."""
    first = read_regular(a, limit + 1)
    if first is None or len(first) > limit:
        return False
    return read_regular(b, limit + 1) == first


def _same_bytes(path: str, data: bytes) -> bool | None:
    """Whether the entry is a regular file holding exactly ``data``; None when it is gone."""
    if not os.path.lexists(path):
        return None
    return read_regular(path, len(data) + 1) == data


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write (a signal, a nearly full disk): go on from there
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


