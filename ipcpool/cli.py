"""``ipcpool run | send | request | check | health | status | errors``.

Each sub-command is one small function; the exit codes are errors.EXIT_*:
0 done, 1 did not succeed (ack timeout, unhealthy, queue full, already
running), 2 bad config or arguments, 3 workers cannot boot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ipcpool.config import ROOT_ENV, Config, load_config
from ipcpool.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    AckTimeout,
    AlreadyRunning,
    ConfigError,
    HandlerError,
    HandlerNotFound,
    IpcpoolError,
    QueueFull,
    ResponseTimeout,
    SpoolError,
)
from ipcpool.logs import setup_logging

log = logging.getLogger("ipcpool")
CONFIG_ENV = "IPCPOOL_CONFIG"


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--payload is not valid JSON: {exc}") from exc


def cmd_run(args: argparse.Namespace) -> int:
    from ipcpool.preflight import check_spool_permissions
    from ipcpool.supervisor import Supervisor

    config = _config(args)
    os.umask(0o077 if config.spool.mode == "private" else 0o007)
    check_spool_permissions(config)
    log.info("starting ipcpool supervisor config=%s root=%s workers=%d", args.config,
             os.path.abspath(config.spool.root), config.pool.workers)
    return Supervisor(config).run()


def cmd_check(args: argparse.Namespace) -> int:
    from ipcpool.handlers import resolve_all

    config = _config(args)
    try:
        handlers = resolve_all(config.handlers)
    except HandlerNotFound as exc:
        raise ConfigError(f"{args.config}: [handlers] {exc}") from exc
    print(f"{args.config}: ok (root {config.spool.root}, {config.pool.workers} workers, "
          f"{len(handlers)} handlers: {', '.join(sorted(handlers)) or 'none'})")
    return EXIT_OK


def _client(args: argparse.Namespace, **overrides: Any) -> Any:
    from ipcpool.client import Client

    return Client.from_config(_config(args), getattr(args, "from_group", None) or "main", **overrides)


def cmd_send(args: argparse.Namespace) -> int:
    overrides = {"format": args.format} if args.format else {}
    with _client(args, **overrides) as client:
        payload = _payload(args.payload)
        if args.ack:
            message_id = client.send_and_wait(args.group, args.type, payload, timeout=args.timeout)
        else:
            message_id = client.send(args.group, args.type, payload)
    print(message_id)
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.request(args.group, args.type, _payload(args.payload), timeout=args.timeout)
    print(json.dumps(result))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from ipcpool.health import read_status, verdict

    config = _config(args)
    status = read_status(config.spool.root)
    ok, reason = verdict(status)
    if args.json:
        print(json.dumps({"healthy": ok, "reason": reason, "status": status}, indent=1))
    else:
        print(reason)
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    from ipcpool.health import read_status, verdict
    from ipcpool.status import render_table

    config = _config(args)
    status = read_status(config.spool.root)
    healthy = verdict(status)
    if status is None:
        print(healthy[1])
        return EXIT_FAILURE
    print(json.dumps(status, indent=1) if args.json else render_table(status, healthy))
    return EXIT_OK if healthy[0] else EXIT_FAILURE


def cmd_errors(args: argparse.Namespace) -> int:
    from ipcpool import quarantine
    from ipcpool.spool import Spool

    spool = Spool.from_config(_config(args))
    action = args.errors_command
    if action == "list":
        entries = quarantine.list_errors(spool, args.group)
        if args.json:
            print(json.dumps([e.summary() for e in entries], indent=1))
        else:
            for e in entries:
                s = e.summary()
                print(f"{s['time']}  {s['group']}  {s['id']}  {s['type']}  attempts={s['attempts']}  {s['reason']}")
            print(f"{len(entries)} quarantined message(s)", file=sys.stderr)
        return EXIT_OK
    if action == "show":
        matches = quarantine.find(spool, args.id, args.group)
        if not matches:
            print(f"no quarantined message with id {args.id}", file=sys.stderr)
            return EXIT_FAILURE
        for e in matches:
            body = quarantine.read_message(spool, e)
            print(json.dumps({"group": e.group, "file": e.file, "error": e.record,
                              "message": body.decode("utf-8", "replace") if body is not None else None}, indent=1))
        return EXIT_OK
    if action == "retry":
        return _errors_retry(spool, args)
    return _errors_purge(spool, args)


def _errors_retry(spool: Any, args: argparse.Namespace) -> int:
    from ipcpool import quarantine

    if not args.all and not args.ids:
        raise ConfigError("errors retry: name message ids, or --all")
    entries = quarantine.list_errors(spool, args.group)
    if not args.all:
        wanted = set(args.ids)
        entries = [e for e in entries if e.message_id in wanted or e.file in wanted]
        missing = wanted - {e.message_id for e in entries} - {e.file for e in entries}
        if missing:
            print(f"not in errors/: {', '.join(sorted(missing))}", file=sys.stderr)
    for e in entries:
        if not quarantine.has_message(spool, e):
            print(f"skipped {e.group}/{e.file}: its error record has no message (purge it)", file=sys.stderr)
            continue
        name = quarantine.retry(spool, e)
        print(f"retried {e.group}/{name}")
    return EXIT_OK if entries or args.all else EXIT_FAILURE


def _errors_purge(spool: Any, args: argparse.Namespace) -> int:
    from ipcpool import quarantine

    if not args.all and not args.older_than:
        raise ConfigError("errors purge: give --all or --older-than DURATION (like 7d)")
    entries = quarantine.list_errors(spool, args.group)
    if args.older_than:
        try:
            entries = quarantine.older_than(entries, quarantine.parse_duration(args.older_than))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    for e in entries:
        quarantine.purge(spool, e)
    print(f"purged {len(entries)} quarantined message(s)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipcpool", description="Supervised worker pool for file-based IPC.")
    sub = parser.add_subparsers(dest="command", required=True)
    default_config = os.environ.get(CONFIG_ENV)

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", default=default_config, required=default_config is None,
                       help=f"TOML config file (default: ${CONFIG_ENV}); ${ROOT_ENV} overrides [spool] root")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            add_config(p)
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "run the supervisor and its workers")
    command("check", cmd_check, "validate the config and import every handler")
    for name, func, text in (("send", cmd_send, "publish one message and print its id"),
                             ("request", cmd_request, "send a request and print the response's result as JSON")):
        p = command(name, func, text)
        p.add_argument("--group", "-g", required=True, help="destination group")
        p.add_argument("--type", "-t", required=True, help="message type (task, command, ... or custom)")
        p.add_argument("--payload", "-p", default="{}", help="payload as JSON (default {})")
        p.add_argument("--from", dest="from_group", default="main", help="this sender's own group (replies)")
        if name == "send":
            p.add_argument("--format", choices=("json", "msgpack"), help="wire format (default: [spool] format)")
            p.add_argument("--ack", action="store_true", help="wait for the ack, retrying per [ack]")
            p.add_argument("--timeout", type=float, help="seconds to wait per attempt (default: [ack] timeout)")
        else:
            p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    for name, func, text in (("health", cmd_health, "exit 0 when the pool is healthy, 1 otherwise"),
                             ("status", cmd_status, "show workers, groups and totals")):
        p = command(name, func, text)
        p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    errors = command("errors", cmd_errors, "list, show, retry or purge quarantined messages", config=False)
    esub = errors.add_subparsers(dest="errors_command", required=True)
    for name, text in (("list", "list quarantined messages"), ("show", "show one message and its error record"),
                       ("retry", "move messages back into messages/"), ("purge", "delete quarantined messages")):
        p = esub.add_parser(name, help=text, description=text)
        add_config(p)
        p.add_argument("--group", "-g", help="only this group")
        if name == "list":
            p.add_argument("--json", action="store_true")
        elif name == "show":
            p.add_argument("id", help="message id (or error file name)")
        elif name == "retry":
            p.add_argument("ids", nargs="*", help="message ids")
            p.add_argument("--all", action="store_true")
        else:
            p.add_argument("--all", action="store_true")
            p.add_argument("--older-than", help="only older than DURATION (30s, 15m, 24h, 7d)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ipcpool: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (AckTimeout, ResponseTimeout, QueueFull, HandlerError, AlreadyRunning, SpoolError) as exc:
        print(f"ipcpool: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except IpcpoolError as exc:
        print(f"ipcpool: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
