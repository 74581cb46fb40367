"""Checks ``ipcpool run`` makes before it touches the spool.

A spool is written by other processes, possibly hostile ones. The supervisor
refuses a root or group folder that anyone may write, or that another user
owns, because such a writer could swap folders for symlinks or forge acks.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ipcpool.config import Config
from ipcpool.errors import SpoolError
from ipcpool.message import GROUP_NAME

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
    if st.st_uid != os.geteuid():
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
    """Raise SpoolError when the root or a group folder is unsafe; warn when running as root."""
    root = Path(config.spool.root).absolute()
    if os.geteuid() == 0:
        log.warning("running as root: handlers run as root, and a spool other users can write becomes a root-owned "
                    "attack surface. Run ipcpool as a dedicated user instead: `useradd --system ipcpool`, "
                    "`chown -R ipcpool %s`, then start it as that user (systemd: User=ipcpool)", root)
    _check_dir(root, "spool root")
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        if GROUP_NAME.match(entry.name) and entry.is_dir(follow_symlinks=False):
            _check_dir(root / entry.name, "group folder")
