"""Checks ``ipcpool run`` makes before it touches the spool.

A spool is written by other processes, possibly hostile ones. The supervisor
refuses a root that anyone may write, or that another user owns, because such
a writer could swap folders for symlinks or forge acks: then it cannot serve
anything, and stops. (A Kubernetes volume root, root's under ``fsGroup``, is
accepted: see ``layout.is_volume_root``.) A *group* folder in that state only
stops that group: the supervisor reports it (status, health, /metrics) and
serves the rest.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ipcpool.config import Config
from ipcpool.errors import SpoolError
from ipcpool.transport.spool.layout import is_volume_root

log = logging.getLogger(__name__)


def _check_dir(path: Path, what: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SpoolError(f"{what} {path} is a symbolic link; point [spool] root at the real folder instead")
    if not stat.S_ISDIR(st.st_mode):
        raise SpoolError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid() and not is_volume_root(st):
        raise SpoolError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
            f"run ipcpool as its owner, or `chown -R {os.geteuid()} {path}`"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise SpoolError(
            f"{what} {path} is world-writable; any user could replace its folders. "
            f"Fix it with `chmod o-w {path}` (use [spool] mode = \"shared\" for writers in a common group)"
        )


def check_spool_permissions(config: Config) -> None:
    """Raise SpoolError when the root is unsafe; warn when running as root."""
    root = Path(config.spool.root).absolute()
    if os.geteuid() == 0:
        log.warning("running as root (handlers too); a user of its own is safer: README, Agents in containers")
    _check_dir(root, "spool root")
