"""The command line's arguments: every sub-command, its options and how each value is checked."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ipcpool import __version__
from ipcpool.cli.commands import (
    cmd_check,
    cmd_health,
    cmd_reload,
    cmd_request,
    cmd_run,
    cmd_send,
    cmd_status,
    cmd_top,
)
from ipcpool.cli.deadletters import cmd_errors
from ipcpool.cli.schedules import cmd_schedule
from ipcpool.config import ROOT_ENV, parse_listen
from ipcpool.errors import InvalidMessage
from ipcpool.message import GROUP_NAME, TYPE_NAME, check_ordering_key

CONFIG_ENV = "IPCPOOL_CONFIG"
Command = Callable[[argparse.Namespace], int]


class _Commands:
    """Adds sub-commands, each with ``--config`` (default: ``$IPCPOOL_CONFIG``) unless told otherwise."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.default_config = os.environ.get(CONFIG_ENV)

    def add_config(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", default=self.default_config, required=self.default_config is None,
                       help=f"TOML config file (default: ${CONFIG_ENV}); ${ROOT_ENV} overrides [spool] root")

    def add(self, name: str, func: Command, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=help_text, description=help_text)
        if config:
            self.add_config(p)
        p.set_defaults(func=func)
        return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipcpool", description="Supervised worker pool for file-based IPC.")
    parser.add_argument("--version", action="version", version=f"ipcpool {__version__}")
    commands = _Commands(parser.add_subparsers(dest="command", required=True))
    _add_pool_commands(commands)
    _add_send_commands(commands)
    _add_view_commands(commands)
    _add_errors_command(commands)
    _add_schedule_command(commands)
    return parser


def _add_pool_commands(commands: _Commands) -> None:
    run = commands.add("run", cmd_run, "run the supervisor and its workers")
    run.add_argument("--workers", "-w", type=_workers_arg, help="worker processes (overrides [pool] workers)")
    run.add_argument("--http", type=_listen_arg, metavar="HOST:PORT",
                     help="serve /metrics, /healthz and /readyz there (overrides [http] listen)")
    commands.add("check", cmd_check, "validate the config and import every handler")
    reload = commands.add("reload", cmd_reload, "make the running supervisor re-read its config and replace its "
                                                "workers (SIGHUP); exit 0 when the reload took")
    reload.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the new workers (default 120)")


def _add_send_commands(commands: _Commands) -> None:
    for name, func, text in (("send", cmd_send, "publish one message and print its id"),
                             ("request", cmd_request, "send a request and print the response's result as JSON")):
        p = commands.add(name, func, text)
        p.add_argument("--group", "-g", required=True, type=_group_arg, help="destination group")
        p.add_argument("--type", "-t", required=True, type=_type_arg,
                       help="message type (task, command, ... or custom)")
        p.add_argument("--payload", "-p", default="{}",
                       help="payload as JSON (default {}); - reads standard input, @FILE reads a file")
        p.add_argument("--from", dest="from_group", default="main", type=_group_arg,
                       help="this sender's own group (replies)")
        if name == "send":
            p.add_argument("--format", choices=("json", "msgpack"), help="wire format (default: [spool] format)")
            p.add_argument("--ack", action="store_true", help="wait for the ack, retrying per [ack]")
            p.add_argument("--timeout", type=float, help="seconds to wait per attempt (default: [ack] timeout)")
            _add_window_args(p)
            p.add_argument("--ordering-key", metavar="KEY", type=_ordering_key_arg,
                           help="its sequence: handled one at a time, in publish order, with the others of KEY")
        else:
            p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        p.add_argument("--wait-for-supervisor", action="store_true",
                       help="with no supervisor running, wait for one to start (default: say so and exit 1 at "
                            "once; the message stays queued)")


def _add_window_args(p: argparse.ArgumentParser) -> None:
    """``send``'s time window: delayed delivery (notBefore) and expiry (expiresAt); a clash exits 2."""
    due = p.add_mutually_exclusive_group()
    due.add_argument("--delay", help="hand it out no sooner than this from now: 30s, 15m, 2h, 1d (notBefore)")
    due.add_argument("--not-before", metavar="TIME", help="hand it out no sooner than this ISO-8601 UTC time, "
                                                          "like 2026-12-24T08:00:00Z (notBefore)")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", help="dead-letter it as expired if not handed out within this from now: 60s, "
                                      "5m (expiresAt)")
    expiry.add_argument("--expires-at", metavar="TIME", help="dead-letter it as expired if not handed out by this "
                                                             "ISO-8601 UTC time (expiresAt)")


def _add_view_commands(commands: _Commands) -> None:
    for name, func, text in (("health", cmd_health, "exit 0 when the pool is healthy, 1 otherwise"),
                             ("status", cmd_status, "show workers, groups and totals")):
        p = commands.add(name, func, text)
        p.add_argument("--json", action="store_true", help="print the whole record as JSON")
        if name == "status":
            p.add_argument("--watch", action="store_true", help="a live view, refreshed every second (ipcpool top)")
    commands.add("top", cmd_top, "a live view of workers and groups, refreshed every second (Ctrl-C leaves)")


def _add_errors_command(commands: _Commands) -> None:
    errors = commands.add("errors", cmd_errors, "list, show, retry or purge quarantined messages", config=False)
    esub = errors.add_subparsers(dest="errors_command", required=True)
    for name, help_text in (("list", "list quarantined messages"),
                            ("show", "show a message and its error record (by id, a unique id prefix, or file)"),
                            ("retry", "move messages back into their inbox"),
                            ("purge", "delete quarantined messages")):
        p = esub.add_parser(name, help=help_text, description=help_text)
        commands.add_config(p)
        p.add_argument("--group", "-g", type=_group_arg, help="only this group")
        if name == "list":
            p.add_argument("--json", action="store_true")
        elif name == "show":
            p.add_argument("id", help="message id, a unique prefix of one, or an errors/ file name")
            p.add_argument("--json", action="store_true", help="the records and messages as JSON")
        elif name == "retry":
            p.add_argument("ids", nargs="*", help="message ids, unique prefixes of ids, or errors/ file names")
            p.add_argument("--all", action="store_true")
        else:
            p.add_argument("--all", action="store_true")
            p.add_argument("--older-than", help="only older than DURATION (30s, 15m, 24h, 7d)")
            p.add_argument("--dry-run", "-n", action="store_true", help="print what would be deleted, delete nothing")


def _add_schedule_command(commands: _Commands) -> None:
    schedule = commands.add("schedule", cmd_schedule, "the [[schedule]] tables: next due times, last published",
                            config=False)
    ssub = schedule.add_subparsers(dest="schedule_command", required=True)
    p = ssub.add_parser("list", help="each schedule, its next three due times (in its timezone) and the last one "
                                     "published", description="each schedule, its next three due times (in its "
                                     "timezone) and the last one published")
    commands.add_config(p)
    p.add_argument("--json", action="store_true")


def _group_arg(text: str) -> str:
    if not GROUP_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"invalid group name {text!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit")
    return text


def _type_arg(text: str) -> str:
    if not TYPE_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"invalid message type {text!r}: a short name of letters, digits, '_', '.', ':' or '-'")
    return text


def _ordering_key_arg(text: str) -> str:
    try:
        return check_ordering_key(text)
    except InvalidMessage as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("invalid envelope: ")) from None


def _listen_arg(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _workers_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
