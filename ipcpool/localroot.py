"""The local root's own state: the one-supervisor lock, the workers' lock, status.json's folder.

Every supervisor has a local root (``[spool] root``), whatever its transport:
``<root>/.ipcpool/lock`` keeps one supervisor per root, ``workers.lock`` is
held shared by each of its workers (so a new supervisor waits for a dead one's
workers), and ``status.json`` is its public view of itself.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ipcpool.errors import AlreadyRunning, SpoolError
from ipcpool.portable import flock_holders

STATE_DIR = ".ipcpool"
LOCK_FILE = "lock"
WORKERS_LOCK = "workers.lock"
STATUS_FILE = "status.json"  # the supervisor's public view of itself, rewritten every interval
STALE_AFTER_INTERVALS = 3  # status older than this many intervals: the supervisor is not running
WORKERS_FILE = "workers.json"  # pid -> start time of each live worker, for a successor without /proc


class LocalRoot:
    """One root's state folder and locks (also the base of the spool transport's Spool)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def ensure(self, mode: int) -> None:
        """The root and its state folder exist (made with ``mode``; a folder already there is left as it is).

        Raises SpoolError, saying how to make it, when this user may not create it.
        """
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            for path in (self.root, self.state_dir):
                try:
                    path.mkdir(mode=mode)
                except FileExistsError:
                    continue
                os.chmod(path, mode)
        except PermissionError as exc:
            raise SpoolError(
                f"cannot create the spool root {self.root}: {exc.strerror} ({exc.filename}); create it for this "
                f"user (uid {os.geteuid()}) first: `install -d -o {os.geteuid()} {self.root}`, or point [spool] "
                f"root (or IPCPOOL_ROOT) at a folder it may write") from None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def workers_lock(self) -> Path:
        return self.state_dir / WORKERS_LOCK

    def acquire_lock(self) -> int:
        """Take the one-supervisor-per-root lock; the fd must stay open for the process's life."""
        path = self.state_dir / LOCK_FILE
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
        Its status.json tells too: a running supervisor rewrites it every
        heartbeat interval and ends it in a final state. That is what a sender
        without /proc (macOS), or whose kernel does not see the supervisor's
        locks (a container on a Mac runs in a VM), goes by.
        """
        try:
            st = os.stat(self.state_dir / LOCK_FILE)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        return bool(flock_holders(st.st_dev, st.st_ino)) or status_is_live(read_status(self.root))

    def record_workers(self, workers: dict[int, float | None]) -> None:
        """Keep who this supervisor's workers are (pid -> start time): a successor finds them without /proc."""
        try:
            write_private(self.state_dir / WORKERS_FILE,
                          json.dumps({str(pid): started for pid, started in workers.items()}).encode())
        except OSError:
            pass  # only a fallback's record: /proc, where there is one, still tells

    def recorded_workers(self) -> dict[int, float]:
        """The workers a previous supervisor of this root recorded (pid -> start time)."""
        try:
            raw = json.loads((self.state_dir / WORKERS_FILE).read_bytes())
            return {int(pid): float(started) for pid, started in raw.items() if started is not None}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a file only the supervisor's user may read or write (0600, whatever
    the umask: in shared mode writers share the group, and these records steer the supervisor)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- status.json ---------------------------------------------------------------------------------------------


def status_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / ".ipcpool" / STATUS_FILE


def write_status(root: str | os.PathLike[str], status: dict[str, Any], *, mode: int = 0o600) -> None:
    """Atomic write: readers see the previous record or this one, never half.

    ``mode`` is set whatever the umask: in shared mode writers may read the
    record, never write it (they could forge the health verdict). On a full
    filesystem (the very time an operator needs the status) the record is
    rewritten in place instead, when it fits in the space the file already
    has: readers retry a record caught half-written.
    """
    path = status_path(root)
    data = json.dumps(status, separators=(",", ":"), default=str).encode()
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:  # a short write (a nearly full disk) goes on from where it stopped
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _rewrite_in_place(path, data):
            raise


def _rewrite_in_place(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if len(data) > os.fstat(fd).st_blocks * 512:
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_status(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    for _attempt in range(3):  # a record rewritten in place may be caught half-written
        try:
            return json.loads(status_path(root).read_bytes())
        except ValueError:
            time.sleep(0.01)
        except OSError:
            return None
    return None


def status_is_live(status: dict[str, Any] | None, *, now: float | None = None) -> bool:
    """Whether the record is a live supervisor's as far as the file tells: fresh (rewritten every interval) and
    not in a final state. Readable from another pid namespace or a VM (an agent in a container on a Mac)."""
    if status is None or status.get("state") in ("stopped", "halted", "failed"):
        return False
    age = (time.time() if now is None else now) - float(status.get("writtenAt", 0))
    return age <= STALE_AFTER_INTERVALS * float(status.get("interval", 1.0))
