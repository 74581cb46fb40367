"""systemd's notify protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET`` per state change.

The supervisor says ``READY=1`` once its workers are ready, ``STATUS=`` lines
(workers, queue depth), ``RELOADING=1`` / ``READY=1`` around a reload,
``STOPPING=1`` on a drain, and ``WATCHDOG=1`` from its loop while the loop
runs (so a stuck loop misses them and systemd restarts it, ``WatchdogSec=``).
Without ``NOTIFY_SOCKET`` every call does nothing. A socket that is gone
or full is not the pool's problem: the error is logged once at debug level.
Twenty lines of protocol, so no library (``sdnotify``, ``systemd-python``) for them.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from ipcpool.ops.terminal import printable

if TYPE_CHECKING:
    from ipcpool.ops.health import Verdict

log = logging.getLogger(__name__)

SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def notify(*lines: str) -> bool:
    """Send ``lines`` as one notification; True when a socket took it."""
    address = os.environ.get(SOCKET_ENV)
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.debug("systemd notification not sent (%s): %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None when no watchdog is asked."""
    usec = os.environ.get(WATCHDOG_ENV, "")
    pid = os.environ.get(WATCHDOG_PID_ENV, "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def status_line(status: dict[str, Any], verdict: Verdict) -> str:
    """``STATUS=`` as ``systemctl status`` shows it: workers ready, queued, in flight, handled, and why the
    pool is unhealthy while it is (escaped: a reason may quote a writer's file name, and a newline in it
    would be another assignment)."""
    totals = status["totals"]
    line = (f"STATUS={sum(1 for w in status['workers'] if w['state'] in ('ready', 'busy'))} workers, "
            f"{totals['queued']} queued, {totals['inflight']} in flight, {totals['handled']} handled")
    return line if verdict.healthy else f"{line}; unhealthy: {printable(verdict.reason)}"
