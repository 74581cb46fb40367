"""Which filesystem the spool is on, where that changes what is cheapest per message.

Recycling a handled file as the next ack (``Claims.complete``) saves a file
create and a delete, which is the dominant cost on a disk filesystem (ext4
without a journal scans past every recently deleted inode on each create).
In memory (tmpfs, ramfs) a create costs next to nothing, and the read lease
and the truncate that make a reuse safe cost more than they save:
``scripts/bench.py --tmpdir /dev/shm`` measured it. So recycling is chosen
per filesystem, once, when a worker's spool is built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# statfs(2) f_type values of the filesystems that live in memory.
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
IN_MEMORY = frozenset({TMPFS_MAGIC, RAMFS_MAGIC})


class _StatFs(ctypes.Structure):
    # Only f_type is read; the rest of struct statfs is room for the kernel to fill (120 bytes on 64-bit).
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def filesystem_type(path: str | os.PathLike[str]) -> int | None:
    """statfs(2)'s f_type for ``path``, or None where it cannot be read (not Linux, an error)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = _StatFs()
        if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return buf.f_type & 0xFFFFFFFF  # the magic numbers are 32-bit; f_type is a signed long


def recycling_pays(path: str | os.PathLike[str]) -> bool:
    """Whether handled files should become the next acks on the filesystem holding ``path``: not in memory.

    A root not made yet is judged by the folder it will be made in.
    """
    where = os.path.abspath(path)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    return filesystem_type(where) not in IN_MEMORY
