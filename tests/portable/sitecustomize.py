"""The interpreter as a Mac gives it: Linux's interfaces removed before anything imports them.

Put this folder on ``PYTHONPATH`` (``.ci/run`` does, for the portable run) and
every Python process started with it (the test run, ``ipcpool run``, its
forkserver and workers, the CLI) lacks what macOS lacks: ``os.pipe2``,
``os.pidfd_open``, ``signal.pidfd_send_signal``, ``select.epoll``,
``fcntl.F_SETLEASE``, libc's ``renameat2`` and inotify, and ``/proc``'s lock
table, descriptor lists and boot id. So each fallback in ipcpool runs here, on
the suite's end-to-end flows, before it runs on a Mac.
"""

import builtins
import ctypes
import fcntl
import os
import re
import select
import signal

for _module, _name in ((os, "pipe2"), (os, "pidfd_open"), (signal, "pidfd_send_signal"), (select, "epoll"),
                       (fcntl, "F_SETLEASE")):
    if hasattr(_module, _name):
        delattr(_module, _name)

_HIDDEN_SYMBOLS = {"renameat2", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch"}
_cdll_getattr = ctypes.CDLL.__getattr__
_cdll_getitem = ctypes.CDLL.__getitem__


def _getattr(self, name):  # type: ignore[no-untyped-def]
    if name in _HIDDEN_SYMBOLS:
        raise AttributeError(name)
    return _cdll_getattr(self, name)


def _getitem(self, name):  # type: ignore[no-untyped-def]
    if name in _HIDDEN_SYMBOLS:
        raise AttributeError(name)
    return _cdll_getitem(self, name)


ctypes.CDLL.__getattr__ = _getattr  # type: ignore[method-assign]
ctypes.CDLL.__getitem__ = _getitem  # type: ignore[method-assign]

_HIDDEN_PATHS = re.compile(r"/proc/(locks|sys/kernel/random/boot_id|(self|\d+)/fd/?)\Z")
_open, _listdir = builtins.open, os.listdir


def _hidden(path):  # type: ignore[no-untyped-def]
    try:
        text = os.fsdecode(path) if not isinstance(path, int) else ""
    except TypeError:
        return False
    return bool(_HIDDEN_PATHS.match(text))


def _open_unless_hidden(file, *args, **kwargs):  # type: ignore[no-untyped-def]
    if _hidden(file):
        raise FileNotFoundError(2, "hidden (no /proc on this platform)", file)
    return _open(file, *args, **kwargs)


def _listdir_unless_hidden(path="."):  # type: ignore[no-untyped-def]
    if _hidden(path):
        raise FileNotFoundError(2, "hidden (no /proc on this platform)", path)
    return _listdir(path)


builtins.open = _open_unless_hidden
os.listdir = _listdir_unless_hidden
os.environ["IPCPOOL_PORTABLE_RUN"] = "1"  # so a test can tell it runs without them
