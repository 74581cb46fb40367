"""The spool on disk: layout, atomic publish, claim, ack, quarantine and scans.

This module is the narrow interface DESIGN.md asks for (publish, claim,
complete, quarantine, requeue, scan): everything that touches a group's
folders goes through :class:`Spool`, so a second backend can replace it.

Every state change is one ``rename(2)`` inside one filesystem, which is atomic:
a message is in exactly one folder at any instant, and a reader never sees a
partial file. ``durability = "power"`` adds fsync of the file before the
rename and of the folder after it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipcpool.errors import AlreadyRunning, InvalidMessage, MessageExists, SpoolError
from ipcpool.message import GROUP_NAME, MESSAGE_ID, SNIFF_BYTES, now_iso

log = logging.getLogger(__name__)

TMP, MESSAGES, PROCESSING, ACKS, RESPONSES, ERRORS = (
    "tmp", "messages", "processing", "acks", "responses", "errors",
)
SUBDIRS = (TMP, MESSAGES, PROCESSING, ACKS, RESPONSES, ERRORS)
STATE_DIR = ".ipcpool"
STAGING_DIR = "staging"
DELIVERIES_DIR = "deliveries"
MAX_NAME_BYTES = 180  # longer message names are shortened in errors/ so every derived name fits in 255
_COPY_SUFFIX = re.compile(r"\.(?:requeued|retried)\d+\Z")
RETRIED_DIR = "retried"
RETRIED = f"errors/{RETRIED_DIR}"  # records of retried messages, kept [spool] retried_retention
ERROR_SUFFIX = ".error.json"
ACK_HOLD_PREFIX = ".ack-"  # processing/.ack-<id>: handled, its ack not yet written (see Spool.hold_for_ack)

# Folder and file modes, set explicitly rather than left to the umask.
# In "shared" mode, writers in the spool's group may write tmp/ and messages/
# (sticky: none can remove another's file), and read acks/ and responses/; only
# the supervisor's user writes the rest, staging its files in a private folder.
_PRIVATE_DIR, _PRIVATE_FILE = 0o700, 0o600
_SHARED_DIRS = {
    "": 0o2750, TMP: 0o3770, MESSAGES: 0o3770, PROCESSING: 0o2700,
    ACKS: 0o2750, RESPONSES: 0o2750, ERRORS: 0o2750,
}
_SHARED_FILE = 0o640
_SHARED_MESSAGE_FILE = 0o660
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_SPARE = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_EFFECTIVE_IDS = os.access in os.supports_effective_ids
MAX_SPARES = 16  # handled files one process keeps for its next acks (more when messages need none)


def is_message_name(name: str) -> bool:
    """Whether an inbox entry (``x.json``, or ``tasks/x.json``) is a candidate, not a writer's temp file."""
    base = name[name.rfind("/") + 1:]
    return not base.startswith(".") and not base.endswith(".tmp")


def split_name(name: str) -> tuple[str, str]:
    """A message's name as the supervisor keys it, to (inbox, file name).

    Files from ``messages/`` are keyed by their own name; those from another
    inbox by ``<inbox>/<file name>``, which is also where they are claimed:
    ``processing/<inbox>/<file name>``. File names never contain ``/``.
    """
    inbox, slash, base = name.partition("/")
    return (inbox, base) if slash else (MESSAGES, name)


def message_stem(name: str) -> str:
    """A message file's name without its inbox, extension or a copy suffix ipcpool added (``.requeued1``)."""
    name = name[name.rfind("/") + 1:]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _COPY_SUFFIX.sub("", stem) if "." in stem else stem


def epoch_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)  # not frozen: built once per delivery, and frozen init costs a setattr per field
class ReadResult:
    data: bytes
    mtime: float
    size: int
    recycle: int | None = None  # its permission bits when it may become our next ack (see _recyclable)


class Spool:
    """One spool root: ``<root>/<group>/{tmp,messages,processing,acks,responses,errors}``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durability: str = "process",
        mode: str = "private",
        max_message_bytes: int = 1024 * 1024,
        private_staging: bool = False,
        inboxes: tuple[str, ...] = (MESSAGES,),
    ) -> None:
        self.root = Path(root).absolute()
        self.inboxes = inboxes  # where writers drop messages; messages/ first
        self.durability = durability
        self.shared = mode == "shared"
        self.max_message_bytes = max_message_bytes
        self._fsync = durability == "power"
        self._root_s = str(self.root)
        self._tmp_counter = 0
        # The supervisor and workers stage acks, responses and error records in a
        # folder only they can write, never in the writers' tmp/.
        self._staging = f"{self._root_s}/{STATE_DIR}/{STAGING_DIR}" if private_staging else None
        # Handled message files kept (in staging) to become the next acks and
        # responses: see :meth:`complete`. Only ever filled with private staging.
        self._spares: list[tuple[str, int]] = []  # (path, permission bits)
        self._euid = os.geteuid()
        self._pid = os.getpid()  # a Spool is never shared across a fork: each worker builds its own

    @classmethod
    def from_config(cls, config: Any, *, private_staging: bool = True) -> Spool:
        """The supervisor's and workers' view (private staging); senders use Client."""
        spool = config.spool
        return cls(spool.root, durability=spool.durability, mode=spool.mode, inboxes=spool.inboxes,
                   max_message_bytes=spool.max_message_bytes, private_staging=private_staging)

    # -- layout ---------------------------------------------------------------

    def path(self, group: str, sub: str, name: str = "") -> str:
        """A path inside a group; callers pass only validated group names."""
        if name:
            return f"{self._root_s}/{group}/{sub}/{name}"
        return f"{self._root_s}/{group}/{sub}"

    def inbox_path(self, group: str, name: str) -> str:
        """Where a message keyed ``name`` (see :func:`split_name`) waits to be claimed."""
        if "/" not in name:
            return f"{self._root_s}/{group}/{MESSAGES}/{name}"
        inbox, base = split_name(name)
        return f"{self._root_s}/{group}/{inbox}/{base}"

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def dir_mode(self, sub: str = "") -> int:
        return _SHARED_DIRS.get(sub, 0o2750) if self.shared else _PRIVATE_DIR

    def file_mode(self, sub: str = "") -> int:
        if not self.shared:
            return _PRIVATE_FILE
        return _SHARED_MESSAGE_FILE if sub in (TMP, MESSAGES) else _SHARED_FILE

    def _mkdir(self, path: Path, mode: int) -> None:
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            if self._staging is not None:  # the supervisor's side: the folders it owns get their modes
                self._own_folder(path, mode)
            return
        os.chmod(path, mode)

    def _own_folder(self, path: Path, mode: int) -> None:
        """A folder made before ipcpool started (a writer's ``mkdir -p``, often 0755): bring it to the
        documented mode when it is ours, refuse it when it is not (its owner could swap what is in it)."""
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return  # the caller says what is wrong with it
        if st.st_uid != self._euid:
            raise SpoolError(f"{path} is owned by uid {st.st_uid}, not by this user (uid {self._euid}); ipcpool "
                             f"must own its folders: `chown {self._euid} {path}`, or run as its owner")
        if stat.S_IMODE(st.st_mode) != mode:
            log.info("folder %s had mode %o; setting the documented %o", path, stat.S_IMODE(st.st_mode), mode)
            os.chmod(path, mode)

    def ensure_root(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._mkdir(self.root, self.dir_mode())
        self._mkdir(self.state_dir, self.dir_mode(""))
        self._mkdir(self.state_dir / DELIVERIES_DIR, _PRIVATE_DIR)
        if self._staging is not None:
            self._mkdir(Path(self._staging), _PRIVATE_DIR)

    def ensure_group(self, group: str) -> None:
        """Create a group's folders (idempotent); refuses a symlinked group folder."""
        if not GROUP_NAME.match(group):
            raise SpoolError(f"invalid group name {group!r}")
        gdir = self.root / group
        extra = [inbox for inbox in self.inboxes if inbox != MESSAGES]
        folders = [(gdir, self.dir_mode()), *((gdir / sub, self.dir_mode(sub)) for sub in SUBDIRS),
                   *((gdir / inbox, self.dir_mode(MESSAGES)) for inbox in extra),
                   *((gdir / PROCESSING / inbox, self.dir_mode(PROCESSING)) for inbox in extra)]
        for path, mode in folders:
            self._mkdir(path, mode)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise SpoolError(f"{path} is not a real directory (a symlink?); refusing group {group!r}")

    def is_group_dir(self, name: str) -> bool:
        """A valid group name that is a real directory (never a symlink)."""
        if not GROUP_NAME.match(name):
            return False
        try:
            return stat.S_ISDIR(os.lstat(self.root / name).st_mode)
        except OSError:
            return False

    def list_groups(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(
            e.name for e in entries
            if GROUP_NAME.match(e.name) and e.is_dir(follow_symlinks=False)
        )

    # -- writing ----------------------------------------------------------------

    def _tmp_name(self) -> str:
        """Short and unguessable: never derived from a (possibly long) message name."""
        self._tmp_counter += 1
        return f".{os.getpid()}-{self._tmp_counter}-{os.urandom(6).hex()}.tmp"  # secrets.token_hex(6)

    def write_atomic(self, group: str, sub: str, name: str, data: bytes, *, mode: int | None = None) -> str:
        """Write ``data`` to tmp/, then rename it to ``<sub>/<name>``: never seen partial.

        A failed write or fsync (ENOSPC, EIO) removes the temp file and raises,
        so nothing partial reaches the destination.
        """
        final = self.path(group, sub, name)
        file_mode = self.file_mode(sub) if mode is None else mode
        while self._spares and sub != MESSAGES:
            if self._write_spare(*self._spares.pop(), final, data, file_mode):
                return final
        staging = self._staging if sub != MESSAGES else None
        tmp_path = f"{staging}/{self._tmp_name()}" if staging else self.path(group, TMP, self._tmp_name())
        fd = os.open(tmp_path, _OPEN_WRITE, file_mode)
        try:
            # Shared: group bits must not depend on the umask (private 0600 only narrows).
            self._fill(fd, data, file_mode if self.shared else None)
            os.rename(tmp_path, final)
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        if self._fsync:
            self.fsync_dir(self.path(group, sub))
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
            if self._fsync:
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
            _unlink_quietly(spare)
            return False
        try:
            self._fill(fd, data, file_mode if spare_mode != file_mode else None, truncate=True)
            os.rename(spare, final)
        except FileNotFoundError:
            _unlink_quietly(spare)
            if os.path.isdir(os.path.dirname(final)):
                return False  # the spare went missing: take another, or a fresh file
            raise  # the destination folder is gone: the caller handles it as for a fresh file
        except BaseException:
            _unlink_quietly(spare)
            raise
        if self._fsync:
            self.fsync_dir(os.path.dirname(final))
        return True

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
        final = self.path(group, MESSAGES, name)
        tmp_path = self.path(group, TMP, self._tmp_name())
        fd = os.open(tmp_path, _OPEN_WRITE, self.file_mode(MESSAGES))
        try:
            self._fill(fd, data, self.file_mode(MESSAGES) if self.shared else None)
            for _attempt in range(3):
                try:
                    rename_noreplace(tmp_path, final)
                    break
                except FileExistsError:
                    same = _same_bytes(final, data)
                    if same is None:
                        continue  # claimed or removed meanwhile: try again
                    if not same:
                        raise MessageExists(group, name) from None
                    _unlink_quietly(tmp_path)
                    return final
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        if self._fsync:
            self.fsync_dir(self.path(group, MESSAGES))
        return final

    # -- the claim cycle ------------------------------------------------------------

    def claim(self, group: str, name: str) -> bool:
        """messages/ -> processing/; False when the file is gone (handled or removed).

        Never replaces a file stranded in processing/ under the same name
        (FileExistsError: the caller requeues the stranded one first).
        """
        try:
            rename_noreplace(self.inbox_path(group, name), self.path(group, PROCESSING, name))
        except FileNotFoundError:
            return False
        return True

    def requeue(self, group: str, name: str) -> str | None:
        """processing/ -> messages/ (a worker died or the supervisor restarted).

        Never replaces a file that arrived meanwhile under the same name (a
        legacy writer may reuse names): then the requeued one gets a new name.
        Returns the name it has in messages/, or None when it was gone.
        """
        source = self.path(group, PROCESSING, name)
        target = name
        stem, dot, ext = name.rpartition(".")
        for attempt in range(1, 100):
            try:
                rename_noreplace(source, self.inbox_path(group, target))
                return target
            except FileNotFoundError:
                if not os.path.lexists(source):
                    return None
                self.ensure_group(group)  # messages/ itself was removed: recreate it, then go on
                continue
            except FileExistsError:
                if _same_content(source, self.inbox_path(group, target)):
                    _unlink_quietly(source)  # a re-publish of the same bytes: one copy is enough
                    return target
                # Counted names while they are few, then a random one: a collision never strands it.
                suffix = f"requeued{attempt}" if attempt < 10 else f"requeued{attempt}-{os.urandom(4).hex()}"
                target = f"{stem}.{suffix}.{ext}" if dot else f"{name}.{suffix}"
        raise FileExistsError(errno.EEXIST, "cannot find a free name in messages/", name)

    def complete(self, group: str, name: str, *, recycle: int | None = None) -> None:
        """Remove a handled message from processing/.

        With ``recycle`` (the permission bits :meth:`read_claimed` returns for a
        file that may be reused), the file moves to private staging instead of
        being unlinked, and the next ack or response is written into it: one rename instead of an unlink
        plus a create. Freeing and allocating inodes per message is the
        dominant cost on some filesystems (ext4 without a journal scans past
        every recently deleted inode on each create).
        """
        source = self.path(group, PROCESSING, name)
        if recycle is not None and self._staging is not None and len(self._spares) < MAX_SPARES:
            self._tmp_counter += 1
            spare = f"{self._staging}/.{self._pid}-{self._tmp_counter}.spare"
            try:
                os.rename(source, spare)
            except OSError:
                pass  # the source is gone, or staging is (recycling is only an optimisation)
            else:
                self._spares.append((spare, recycle))
                return
        _unlink_quietly(source)

    def unlink_quietly(self, group: str, sub: str, name: str) -> None:
        """Remove a file in a group folder; one that is gone already is no error, another failure is logged."""
        try:
            os.unlink(self.path(group, sub, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s/%s/%s: %s", group, sub, name, exc)

    def drop_spares(self) -> None:
        """Unlink the files kept for reuse (a worker's clean exit)."""
        while self._spares:
            _unlink_quietly(self._spares.pop()[0])

    def read_claimed(self, group: str, name: str) -> ReadResult:
        """Read a claimed file safely: no symlinks, only regular single-link files, size-capped.

        Raises FileNotFoundError when it vanished, InvalidMessage (with the
        reason) when it must not be read.
        """
        path = self.path(group, PROCESSING, name)
        try:
            fd = os.open(path, _OPEN_READ)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidMessage("refused: a symbolic link, not a regular file") from exc
            if exc.errno == errno.ENXIO:
                raise InvalidMessage("refused: a socket or device, not a regular file") from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise InvalidMessage("refused: not readable by the supervisor's user (check the writer's umask)") \
                    from exc
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
            return ReadResult(data, st.st_mtime, len(data), self._recyclable(fd, st))
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
        if self.shared or st.st_uid != self._euid or mode & 0o077 or self._staging is None:
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

    # -- acks and responses -----------------------------------------------------------

    def has_ack(self, group: str, message_id: str) -> bool:
        return self.has_ack_named(group, ack_name(message_id))

    def has_ack_named(self, group: str, name: str) -> bool:
        """``name`` from :func:`ack_name`: a worker checks, then writes, the same ack."""
        # No exception object when absent; effective ids, as open() would use.
        return os.access(self.path(group, ACKS, name), os.F_OK, effective_ids=_EFFECTIVE_IDS)

    def write_ack(self, group: str, message_id: str) -> None:
        self.write_ack_named(group, ack_name(message_id))

    def write_ack_named(self, group: str, name: str) -> None:
        self.write_atomic(group, ACKS, name, now_iso().encode())

    def response_path(self, group: str, request_id: str) -> str:
        return self.path(group, RESPONSES, f"{_safe_id(request_id)}.json")

    def write_response(self, group: str, request_id: str, data: bytes) -> None:
        self.write_atomic(group, RESPONSES, f"{_safe_id(request_id)}.json", data)

    def write_nack(self, group: str, body: dict[str, Any]) -> str:
        """``acks/<id>.nack``: the message ended in errors/, and why (JSON), for a waiting sender.

        Kept, and pruned, as acks are; never counted as an ack (a nacked
        message may be retried from errors/ and handled).
        """
        return self.write_atomic(group, ACKS, nack_name(body["id"]),
                                 json.dumps(body, separators=(",", ":"), default=str).encode())

    def hold_for_ack(self, group: str, name: str, message_id: str) -> str:
        """A handled message whose ack could not be written: keep it, renamed, as the proof.

        ``processing/.ack-<id>`` is never requeued (a dot-file); whoever
        writes the ack later (the supervisor, now or at its next start)
        removes it. Returns the name it now has (its own if even the rename
        failed).
        """
        marker = f"{ACK_HOLD_PREFIX}{_safe_id(message_id)}"
        try:
            os.rename(self.path(group, PROCESSING, name), self.path(group, PROCESSING, marker))
        except OSError:
            return name
        return marker

    def ack_holds(self, group: str) -> list[str]:
        """Markers left by :meth:`hold_for_ack` in a group's processing/."""
        try:
            with os.scandir(self.path(group, PROCESSING)) as entries:
                return [e.name for e in entries if e.name.startswith(ACK_HOLD_PREFIX)]
        except FileNotFoundError:
            return []

    def is_held_for_ack(self, group: str, message_id: str) -> bool:
        return os.path.lexists(self.path(group, PROCESSING, f"{ACK_HOLD_PREFIX}{message_id}"))

    def release_ack_hold(self, group: str, held: str, message_id: str | None = None) -> None:
        """Write the held message's ack, then drop the held file (in that order: the dedupe never lapses)."""
        self.write_ack(group, message_id or held[len(ACK_HOLD_PREFIX):])
        _unlink_quietly(self.path(group, PROCESSING, held))

    # -- errors/ -------------------------------------------------------------------------

    def error_name_for(self, group: str, name: str) -> str:
        """The free ``<epoch_ms>-<name>`` a message would get in errors/ (see :meth:`quarantine`).

        A message from another inbox than messages/ gets ``<epoch_ms>-<inbox>~<name>``.
        """
        inbox, name = split_name(name)
        if inbox != MESSAGES:
            name = f"{inbox}~{name}"
        short = name if len(name.encode()) <= MAX_NAME_BYTES else \
            f"{name.encode()[:120].decode(errors='ignore')}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
        if short.endswith(ERROR_SUFFIX):
            short += ".msg"
        errors_dir = self.path(group, ERRORS)
        if not os.path.isdir(errors_dir):
            self.ensure_group(group)  # someone removed errors/: recreate rather than strand the message
        stamp, n = epoch_ms(), 0
        error_name = f"{stamp}-{short}"
        while any(os.path.lexists(f"{errors_dir}/{error_name}{suffix}") for suffix in ("", ERROR_SUFFIX)):
            n += 1
            error_name = f"{stamp}-{n}-{short}"
        return error_name

    def quarantine(self, group: str, name: str, record: dict[str, Any], *, source: str = PROCESSING,
                   nack: dict[str, Any] | None = None, error_name: str | None = None) -> str:
        """Move a message to errors/ with ``<epoch_ms>-<name>.error.json`` beside it.

        The reason is written first, so a crash in between never leaves a
        message in errors/ without one; then the move; then, with ``nack``,
        the negative ack ``acks/<id>.nack`` that answers a waiting sender (see
        :meth:`write_nack`). Any failure undoes what was done and raises, so
        the message is either quarantined and answered or still in ``source``.
        Names never collide or overwrite (a same-millisecond twin gets a
        counter), a long name is shortened, and a message whose own name ends
        in ``.error.json`` gets ``.msg`` appended. Returns the new file name;
        FileNotFoundError when the message is gone. ``error_name`` is one
        :meth:`error_name_for` gave earlier (a response may already name it).
        """
        error_name = error_name or self.error_name_for(group, name)
        errors_dir = self.path(group, ERRORS)
        inbox, base = split_name(name)
        record = {"file": error_name, "originalName": base, "inbox": inbox, "group": group, "time": now_iso(),
                  **record}
        body = json.dumps(record, indent=2, default=str).encode()
        self.write_atomic(group, ERRORS, error_name + ERROR_SUFFIX, body)
        moved = False
        try:
            rename_noreplace(self.path(group, source, name), f"{errors_dir}/{error_name}")
            moved = True
            if nack is not None:  # last: a sender told of the record finds the message there too
                self.write_nack(group, dict(nack, errorFile=f"{group}/{ERRORS}/{error_name}"))
        except BaseException:
            if moved:  # the nack failed: put the message back, so the whole move is retried
                os.rename(f"{errors_dir}/{error_name}", self.path(group, source, name))
            _unlink_quietly(f"{errors_dir}/{error_name}{ERROR_SUFFIX}")
            raise
        if self._fsync:
            self.fsync_dir(errors_dir)
        return error_name

    # -- scans ---------------------------------------------------------------------------------

    def scan(self, group: str, sub: str = MESSAGES) -> list[str]:
        """Names of candidate message files in one of a group's folders (no stat per file)."""
        try:
            with os.scandir(self.path(group, sub)) as entries:
                return [e.name for e in entries if is_message_name(e.name) and not e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def scan_inboxes(self, group: str) -> list[str]:
        """Every message waiting in the group's inboxes, keyed as :func:`split_name` reads them."""
        names = self.scan(group, MESSAGES)
        for inbox in self.inboxes:
            if inbox != MESSAGES:
                names += [f"{inbox}/{name}" for name in self.scan(group, inbox)]
        return names

    def scan_processing(self, group: str) -> list[str]:
        """Every claimed message in processing/ (and processing/<inbox>/), keyed the same way."""
        names = self.scan(group, PROCESSING)
        for inbox in self.inboxes:
            if inbox != MESSAGES:
                names += [f"{inbox}/{name}" for name in self.scan(group, f"{PROCESSING}/{inbox}")]
        return names

    def count(self, group: str, sub: str) -> int:
        try:
            with os.scandir(self.path(group, sub)) as entries:
                return sum(1 for _ in entries)
        except FileNotFoundError:
            return 0

    def scan_ages(self, group: str, sub: str, older_than: float) -> Iterator[str | None]:
        """Each name older than ``older_than``, and None for each younger entry.

        The Nones let a caller that must not stall (the supervisor's loop)
        pause anywhere in a folder of a day's acks, not only at old files.
        """
        try:
            with os.scandir(self.path(group, sub)) as entries:
                for entry in entries:
                    try:
                        old = entry.stat(follow_symlinks=False).st_mtime < older_than
                    except FileNotFoundError:
                        old = False
                    yield entry.name if old else None
        except FileNotFoundError:
            return

    def prune_staging(self, live_pids: set[int]) -> int:
        """Remove staging files left by processes that are gone (temp files, spares); returns how many.

        Every staging name starts with ``.<pid>-``; a file of a live process
        is kept even when old (a spare's mtime is its message's).
        """
        if self._staging is None:
            return 0
        removed = 0
        try:
            with os.scandir(self._staging) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return 0
        for name in names:
            pid_text = name[1:].split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) in live_pids:
                continue
            try:
                os.unlink(f"{self._staging}/{name}")
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("cannot remove staging leftover %s: %s", name, exc)
                continue
            removed += 1
        return removed

    # -- the supervisor's own state --------------------------------------------------------------

    def acquire_lock(self) -> int:
        """Take the one-supervisor-per-root lock; the fd must stay open for the process's life."""
        path = self.state_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another ipcpool supervisor (pid {owner}) already runs on {self.root}; "
                "stop it first, or point this one at another [spool] root"
            ) from None
        self.record_lock_owner(fd)
        return fd

    @staticmethod
    def record_lock_owner(fd: int) -> None:
        """Write this process's pid into the held lock (also by a child the lock was handed to)."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def supervisor_running(self) -> bool | None:
        """Whether a supervisor holds this root's lock now; None where that cannot be told.

        Read from /proc/locks without touching the lock (taking it, even
        briefly, could make a starting supervisor fail with AlreadyRunning).
        """
        try:
            st = os.stat(self.state_dir / "lock")
        except FileNotFoundError:
            return False
        except OSError:
            return None
        holders = flock_holders(st.st_dev, st.st_ino)
        return None if holders is None else bool(holders)

    def delivery_path(self, group: str, name: str) -> Path:
        """Hashed, so any message name fits; the record holds the real name."""
        digest = hashlib.sha1(name.encode()).hexdigest()
        return self.state_dir / DELIVERIES_DIR / group / f"{digest}.json"

    def save_deliveries(self, group: str, name: str, history: list[dict[str, Any]]) -> None:
        path = self.delivery_path(group, name)
        path.parent.mkdir(mode=_PRIVATE_DIR, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(json.dumps({"name": name, "history": history}).encode())
        os.replace(tmp, path)

    def drop_deliveries(self, group: str, name: str) -> None:
        _unlink_quietly(str(self.delivery_path(group, name)))

    def load_deliveries(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Every message's recorded failed deliveries, keyed by (group, file name)."""
        base = self.state_dir / DELIVERIES_DIR
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if not base.is_dir():
            return found
        for gdir in base.iterdir():
            if not GROUP_NAME.match(gdir.name):
                continue
            for path in gdir.glob("*.json"):
                try:
                    record = json.loads(path.read_bytes())
                    found[(gdir.name, str(record["name"]))] = list(record["history"])
                except (OSError, ValueError, KeyError, TypeError):
                    log.warning("unreadable delivery record %s; ignoring it", path)
        return found


def flock_holders(dev: int, ino: int) -> list[int] | None:
    """Pids /proc/locks lists as holding a flock on the file (``dev``, ``ino``); None without /proc/locks.

    The pid is the one that took the lock: a candidate, never proof of who holds it now.
    """
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids: list[int] = []
    try:
        with open("/proc/locks") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
                    pid = int(parts[4])
                    if pid not in pids:
                        pids.append(pid)
    except (OSError, ValueError):
        return None
    return pids


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_RENAMEAT2 = _load_renameat2()
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's, inlined
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(source: str, target: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``target``."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, source.encode(_FS_ENCODING, _FS_ERRORS), _AT_FDCWD,
                      target.encode(_FS_ENCODING, _FS_ERRORS), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), source, None, target) if err != errno.EEXIST \
                else FileExistsError(err, os.strerror(err), target)
    # No renameat2 here: check, then rename (a narrow race, on old kernels only).
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target)


def _same_content(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return os.fstat(fa.fileno()).st_size == os.fstat(fb.fileno()).st_size and fa.read() == fb.read()
    except OSError:
        return False


def ack_name(message_id: str) -> str:
    """``<id>.ack``, for an id checked safe as a file name."""
    return f"{_safe_id(message_id)}.ack"


def nack_name(message_id: str) -> str:
    """``<id>.nack``: the negative ack beside where the ack would be."""
    return f"{_safe_id(message_id)}.nack"


def _same_bytes(path: str, data: bytes) -> bool | None:
    """Whether the file holds exactly ``data``; None when it is gone."""
    try:
        fd = os.open(path, _OPEN_READ)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def _safe_id(message_id: str) -> str:
    """Ids reach file names only after this check (no '/', '..', NUL)."""
    if not MESSAGE_ID.match(message_id):
        raise InvalidMessage(f"unsafe message id {message_id!r}")
    return message_id


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


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write (a signal, a nearly full disk): go on from there
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
