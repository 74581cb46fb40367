"""The spool on disk: folder names and modes, message names, paths, and the folders themselves.

::

    <root>/<group>/tmp/ messages/ tasks/ processing/ acks/ responses/ errors/ delayed/
    <root>/.ipcpool/            the supervisor's own (see ipcpool.localroot)

Modes are set explicitly, never left to the umask. In "shared" mode writers in
the spool's group may write ``tmp/`` and the inboxes (sticky: none can remove
another's file) and read ``acks/`` and ``responses/``; only the supervisor's
user writes the rest, staging its files in a private folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ipcpool.errors import InvalidMessage, SpoolError
from ipcpool.message import GROUP_NAME, MESSAGE_ID

log = logging.getLogger(__name__)

TMP, MESSAGES, PROCESSING, ACKS, RESPONSES, ERRORS, DELAYED = (
    "tmp", "messages", "processing", "acks", "responses", "errors", "delayed",
)
SUBDIRS = (TMP, MESSAGES, PROCESSING, ACKS, RESPONSES, ERRORS, DELAYED)
STATE_DIR = ".ipcpool"
STAGING_DIR = "staging"
DELIVERIES_DIR = "deliveries"
MAX_NAME_BYTES = 180  # longer message names are shortened in errors/ so every derived name fits in 255
NAME_MAX = 255  # bytes in one file name (Linux, macOS): a name ipcpool derives never exceeds it
_COPY_SUFFIX = re.compile(r"(?:\.ordered)?(?:\.(?:requeued|retried)\d+(?:-[0-9a-f]+)?)?\Z")  # and a sequence's mark
RETRIED_DIR = "retried"
RETRIED = f"errors/{RETRIED_DIR}"  # records of retried messages, kept [spool] retried_retention
ERROR_SUFFIX = ".error.json"
ACK_HOLD_PREFIX = ".ack-"  # processing/.ack-<id>: handled, its ack not yet written (see Claims.hold_for_ack)

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
_SHARED_DIRS = {
    "": 0o2750, TMP: 0o3770, MESSAGES: 0o3770, PROCESSING: 0o2700, DELAYED: 0o2700,
    ACKS: 0o2750, RESPONSES: 0o2750, ERRORS: 0o2750,
}
_SHARED_FILE = 0o640
_SHARED_MESSAGE_FILE = 0o640  # its writer alone may change it: the sticky folder only stops removal


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
    """A message file's name without its inbox, extension, a copy suffix ipcpool added (``.requeued1``) or the
    mark of a sequence's message (``<id>.ordered.json``: ``ipcpool.ordering``)."""
    name = name[name.rfind("/") + 1:]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _COPY_SUFFIX.sub("", stem) if "." in stem else stem


def name_digest(name: str) -> str:
    """A short hash of a file name as the kernel holds it (any bytes: names need not be UTF-8)."""
    return hashlib.sha1(os.fsencode(name)).hexdigest()[:12]


def shorten(name: str, max_bytes: int) -> str:
    """``name`` if it fits in ``max_bytes``, else its first bytes, ``~`` and a digest of the whole, to fit."""
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    return f"{os.fsdecode(raw[:max_bytes - 13])}~{name_digest(name)}"


def copy_name(name: str, suffix: str) -> str:
    """``<stem>.<suffix>.<ext>``: a second copy's name beside the first, shortened so it always fits.

    Only the stem is shortened, so the extension (the format) and the suffix
    (which :func:`message_stem` removes again) stay as they are.
    """
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    tail = f".{suffix}.{ext}" if dot else f".{suffix}"
    return shorten(stem, NAME_MAX - len(os.fsencode(tail))) + tail


def epoch_ms() -> int:
    return int(time.time() * 1000)


def ack_name(message_id: str) -> str:
    """``<id>.ack``, for an id checked safe as a file name."""
    return f"{safe_id(message_id)}.ack"


def nack_name(message_id: str) -> str:
    """``<id>.nack``: the negative ack beside where the ack would be."""
    return f"{safe_id(message_id)}.nack"


def safe_id(message_id: str) -> str:
    """Ids reach file names only after this check (no '/', '..', NUL)."""
    if not MESSAGE_ID.match(message_id):
        raise InvalidMessage(f"unsafe message id {message_id!r}")
    return message_id


def root_mode(root: str | os.PathLike[str]) -> str:
    """The mode a sender that was not told one writes in: the root's own. A shared root is setgid (2750, as
    the supervisor makes it, or a Kubernetes volume's 2775), and its supervisor may be another user, who reads
    only files written 0640; a private root (0700) lets no other user in. No root yet: private."""
    try:
        return "shared" if os.stat(root).st_mode & stat.S_ISGID else "private"
    except OSError:
        return "private"


def is_volume_root(st: os.stat_result) -> bool:
    """The shape Kubernetes gives a volume mounted under a pod's ``fsGroup``: owned by root, setgid,
    group-writable, its group one of ours, not writable by others. Accepted as the spool root (only as the
    root): root may do anything anyway, and everything ipcpool makes inside it is its own."""
    return (st.st_uid == 0 and bool(st.st_mode & stat.S_ISGID) and bool(st.st_mode & stat.S_IWGRP)
            and not st.st_mode & stat.S_IWOTH and st.st_gid in {os.getegid(), *os.getgroups()})


class Folders:
    """Paths, modes and folders of one spool root: what every other part of a spool is built on.

    ``staging``: the private folder the supervisor and its workers write acks, responses and
    records in before renaming them into place (a sender has none: it writes into ``tmp/``).
    """

    def __init__(self, root: str | os.PathLike[str], *, mode: str = "private",
                 inboxes: tuple[str, ...] = (MESSAGES,), private_staging: bool = False) -> None:
        self.root = Path(root).absolute()
        self._root_s = str(self.root)
        self.inboxes = inboxes  # where writers drop messages; messages/ first
        self.shared = mode == "shared"
        self.staging: str | None = f"{self._root_s}/{STATE_DIR}/{STAGING_DIR}" if private_staging else None
        self.euid = os.geteuid()

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

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

    def dir_mode(self, sub: str = "") -> int:
        return _SHARED_DIRS.get(sub, 0o2750) if self.shared else PRIVATE_DIR

    def file_mode(self, sub: str = "") -> int:
        if not self.shared:
            return PRIVATE_FILE
        return _SHARED_MESSAGE_FILE if sub in (TMP, MESSAGES) else _SHARED_FILE

    def _mkdir(self, path: Path, mode: int) -> None:
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            if self.staging is not None:  # the supervisor's side: the folders it owns get their modes
                self._own_folder(path, mode)
            return
        os.chmod(path, mode)

    def _own_folder(self, path: Path, mode: int) -> None:
        """A folder made before ipcpool started (a writer's ``mkdir -p``, often 0755): bring it to the
        documented mode when it is ours, refuse it when it is not (its owner could swap what is in it)."""
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return  # the caller says what is wrong with it
        if path == self.root and is_volume_root(st):
            return  # a Kubernetes volume under fsGroup: root's, setgid, ours by group (see is_volume_root)
        if st.st_uid != self.euid:
            raise SpoolError(f"{path} is owned by uid {st.st_uid}, not by this user (uid {self.euid}); ipcpool "
                             f"must own its folders: `chown -R {self.euid} {path}`, or run ipcpool as its owner")
        if stat.S_IMODE(st.st_mode) != mode:
            if path == self.root and not self.shared and st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IRWXG:
                log.warning("root %s was made for shared mode (setgid, mode %o) but [spool] mode is \"private\": "
                            "writers in its group lose access now; set [spool] mode = \"shared\" if they write here",
                            path, stat.S_IMODE(st.st_mode))
            log.info("folder %s had mode %o; setting the documented %o", path, stat.S_IMODE(st.st_mode), mode)
            os.chmod(path, mode)

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

    def free_space(self) -> dict[str, int] | None:
        """Free bytes and free inodes on the spool's filesystem (for unprivileged users), or None."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return {"freeBytes": st.f_bavail * st.f_frsize, "freeInodes": st.f_favail}

    def count_dead_letters(self, group: str) -> int:
        """How many messages a group's errors/ holds (its records, ``*.error.json``); 0 without the folder."""
        try:
            with os.scandir(self.path(group, ERRORS)) as entries:
                return sum(1 for e in entries if e.name.endswith(ERROR_SUFFIX))
        except FileNotFoundError:
            return 0

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

    def unlink_quietly(self, group: str, sub: str, name: str) -> None:
        """Remove a file in a group folder; one that is gone already is no error, another failure is logged."""
        try:
            os.unlink(self.path(group, sub, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s/%s/%s: %s", group, sub, name, exc)

    def ensure_root(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._mkdir(self.root, self.dir_mode())
        self._mkdir(self.state_dir, self.dir_mode(""))
        self._mkdir(self.state_dir / DELIVERIES_DIR, PRIVATE_DIR)
        if self.staging is not None:
            staging = Path(self.staging)
            self._mkdir(staging, PRIVATE_DIR | (stat.S_ISGID if self.shared else 0))
            if self.shared:  # setgid, in the root's group: acks and responses staged there are the root's
                gid = os.stat(self.root).st_gid  # group's to read, as the writers in it must
                if os.stat(staging).st_gid != gid:
                    os.chown(staging, -1, gid)
