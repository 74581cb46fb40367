"""``ipcpool run | send | request | check | reload | health | status | top | errors | schedule``: the command line.

The exit codes are errors.EXIT_*: 0 done, 1 did not succeed (ack timeout, a
message rejected or failed, unhealthy, queue full, already running), 2 bad
config or arguments, 3 workers cannot boot. Output piped into a reader that
stops early (``head``) ends quietly with 0.

``parser`` builds the arguments; ``commands`` runs each sub-command (one small
function each), ``deadletters`` the ``errors`` ones and ``schedules`` ``schedule list``; ``views``,
``liveview`` and ``progress`` draw on a terminal (the only modules that import
rich).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ipcpool.cli.parser import build_parser
from ipcpool.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, IpcpoolError, UnknownGroup
from ipcpool.msgtime import BadWindow
from ipcpool.ops.logs import setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UnknownGroup, BadWindow) as exc:
        print(f"ipcpool: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except IpcpoolError as exc:
        print(f"ipcpool: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader stopped early (`ipcpool status | head`): not an error. Point stdout at
        # /dev/null so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
