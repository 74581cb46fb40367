"""What differs between Linux and macOS: each interface ipcpool prefers, and the fallback it takes without it.

Linux-only interfaces are optimisations, never requirements. Every function
here works where its preferred interface is missing, and the suite runs once
more with them removed at interpreter start (``tests/portable/sitecustomize.py``
deletes ``os.pipe2``, ``os.pidfd_open``, ``signal.pidfd_send_signal``,
``select.epoll``, ``fcntl.F_SETLEASE``, and hides libc's ``renameat2`` and
inotify, and ``/proc``'s locks, descriptors and boot id), so each fallback is
exercised on this machine before it is needed on a Mac.

=======================  ==============================  ==========================================
need                     preferred (where)               fallback
=======================  ==============================  ==========================================
a non-blocking pipe      ``pipe2`` (Linux)               ``pipe`` + flags (no fork can come between:
                                                         the supervisor's loop is one thread)
a process, not a pid     pidfd (Linux 5.3+)              pid + start time, checked before a signal
a no-replace rename      ``renameat2`` (Linux 3.15+),    check, then rename (a narrow race: only a
                         ``renamex_np`` (macOS 10.12+)   name created in between is replaced)
who holds a flock        ``/proc/locks`` (Linux)         the supervisor's own record of its workers
a boot clock and its id  ``CLOCK_BOOTTIME``, boot_id     the monotonic clock, no id (only keeps acks
                                                         longer: see ledgerclock)
=======================  ==============================  ==========================================
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import time
from typing import Any

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's, inlined
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # renameat2's flag (Linux)
_RENAME_EXCL = 0x00000004  # renamex_np's flag (macOS)
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PROC_LOCKS = "/proc/locks"


# -- pipes ---------------------------------------------------------------------------------------------------------


def pipe() -> tuple[int, int]:
    """A pipe whose ends are non-blocking and close-on-exec."""
    if hasattr(os, "pipe2"):
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    read_end, write_end = os.pipe()  # os.pipe's descriptors are non-inheritable (close-on-exec) already
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


# -- processes -----------------------------------------------------------------------------------------------------


def pidfd_open(pid: int) -> int | None:
    """A descriptor for the process ``pid`` is now (Linux 5.3+); None where there is none, or it has ended."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def pidfd_signal(pidfd: int, signum: int) -> None:
    """Signal the process a pidfd holds (never a stranger that reused its pid); ProcessLookupError when gone."""
    signal.pidfd_send_signal(pidfd, signum)


# -- renames -------------------------------------------------------------------------------------------------------


def _load_noreplace() -> tuple[Any, int] | None:
    """libc's no-replace rename and its flag: renameat2 (Linux), renamex_np (macOS), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    for name, argtypes, flag in (
        ("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint], _RENAME_NOREPLACE),
        ("renamex_np", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint], _RENAME_EXCL),
    ):
        try:
            func = getattr(libc, name)
        except AttributeError:
            continue
        func.argtypes = argtypes
        return func, flag
    return None


_NOREPLACE = _load_noreplace()


def rename_noreplace(source: str, target: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``target``."""
    if _NOREPLACE is not None:
        func, flag = _NOREPLACE
        src, dst = source.encode(_FS_ENCODING, _FS_ERRORS), target.encode(_FS_ENCODING, _FS_ERRORS)
        done = func(_AT_FDCWD, src, _AT_FDCWD, dst, flag) if flag == _RENAME_NOREPLACE else func(src, dst, flag)
        if done == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), target)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # else: this filesystem lacks it
            raise OSError(err, os.strerror(err), source, None, target)
    # No no-replace rename here: check, then rename (a name created in between would be replaced).
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target)


# -- clocks --------------------------------------------------------------------------------------------------------


def boot_clock() -> float:
    """Seconds since boot, suspend included where the platform counts it; never jumps."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none."""
    try:
        with open(_BOOT_ID) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


# -- what this interpreter gives ---------------------------------------------------------------------------------


def interfaces() -> str:
    """Which side of the table above this process takes, for one log line at start: on a Mac, or in the
    portable run, it shows every fallback in use (``loop=PollSelector``-style words, stable for tests)."""
    import fcntl
    import selectors

    renames = {None: "check-then-rename", _RENAME_NOREPLACE: "renameat2", _RENAME_EXCL: "renamex_np"}
    return " ".join((
        f"loop={selectors.DefaultSelector.__name__}",
        f"pidfd={'yes' if hasattr(os, 'pidfd_open') else 'no'}",
        f"renames={renames[_NOREPLACE[1] if _NOREPLACE else None]}",
        f"leases={'yes' if hasattr(fcntl, 'F_SETLEASE') else 'no'}",
        f"locks={'/proc/locks' if flock_holders(0, 0) is not None else 'own-record'}",
    ))


# -- locks held by other processes ---------------------------------------------------------------------------------


def flock_holders(dev: int, ino: int) -> list[int] | None:
    """Pids ``/proc/locks`` lists as holding a flock on the file (``dev``, ``ino``); None without it.

    The pid is the one that took the lock: a candidate, never proof of who holds it now.
    """
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids: list[int] = []
    try:
        with open(_PROC_LOCKS) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
                    pid = int(parts[4])
                    if pid not in pids:
                        pids.append(pid)
    except (OSError, ValueError):
        return None
    return pids


def has_open(pid: int, dev: int, ino: int) -> bool | None:
    """Whether process ``pid`` has the file (``dev``, ``ino``) open; None where that cannot be told."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:  # no /proc here (or the process is gone): the caller's other proof decides
        return None
    except OSError:
        return False
    for name in names:
        try:
            st = os.stat(f"{fd_dir}/{name}")
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            return True
    return False
