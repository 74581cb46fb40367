"""``ipcpool run | send | request | check | reload | health | status | top | errors``.

Each sub-command is one small function; the exit codes are errors.EXIT_*:
0 done, 1 did not succeed (ack timeout, a message rejected or failed,
unhealthy, queue full, already running), 2 bad config or arguments, 3
workers cannot boot. Output piped into a reader that stops early (``head``)
ends quietly with 0. The ``errors`` sub-commands live in ``errors_cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ipcpool import __version__
from ipcpool.config import ROOT_ENV, Config, load_config, parse_listen
from ipcpool.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    ConfigError,
    HandlerNotFound,
    IpcpoolError,
    UnknownGroup,
)
from ipcpool.message import GROUP_NAME, TYPE_NAME
from ipcpool.ops.logs import setup_logging
from ipcpool.ops.terminal import printable

log = logging.getLogger("ipcpool")
CONFIG_ENV = "IPCPOOL_CONFIG"


def _config(args: argparse.Namespace) -> Config:
    import dataclasses

    config = load_config(args.config)
    workers = getattr(args, "workers", None)
    if workers is not None:
        config = dataclasses.replace(config, pool=dataclasses.replace(config.pool, workers=workers))
    listen = getattr(args, "http", None)
    if listen is not None:
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, listen=listen))
    return config


def _payload(text: str) -> Any:
    """``--payload``: JSON text, ``-`` for standard input, or ``@FILE`` (no argument-list limit)."""
    if text == "-":
        text, where = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as handle:
                text, where = handle.read(), text[1:]
        except OSError as exc:
            raise ConfigError(f"--payload {text}: cannot read {text[1:]}: {exc.strerror}") from exc
    else:
        where = "--payload"
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--payload is not valid JSON ({where}): {exc}") from exc


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


def cmd_run(args: argparse.Namespace) -> int:
    from ipcpool.supervisor import Supervisor
    from ipcpool.transport import preflight

    config = _config(args)
    setup_logging(config.log.format)
    os.umask(0o077 if config.spool.mode == "private" else 0o007)
    preflight(config)
    log.info("starting ipcpool supervisor config=%s root=%s workers=%d", args.config,
             os.path.abspath(config.spool.root), config.pool.workers)
    return Supervisor(config, reread=lambda: _config(args)).run()


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to the supervisor owning the root, then its verdict from status.json."""
    from ipcpool.reload import ask_reload

    config = _config(args)
    ok, said = ask_reload(config.spool.root, timeout=args.timeout)
    print(said, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_check(args: argparse.Namespace) -> int:
    from ipcpool.handlers import resolve_all

    config = _config(args)
    try:
        handlers = resolve_all(config.handlers)
    except HandlerNotFound as exc:
        raise ConfigError(f"{args.config}: [handlers] {exc}") from exc
    if not handlers:
        print(f"{args.config}: warning: [handlers] is empty: every message would go to errors/ "
              '("no handler for type X"); name a handler per type, or "*"', file=sys.stderr)
    print(f"{args.config}: ok (root {config.spool.root}, {config.pool.workers} workers, "
          f"{len(handlers)} handlers: {', '.join(sorted(handlers)) or 'none'})")
    return EXIT_OK


def _client(args: argparse.Namespace, **overrides: Any) -> Any:
    from ipcpool.client import Client

    return Client.from_config(_config(args), getattr(args, "from_group", None) or "main", **overrides)


def cmd_send(args: argparse.Namespace) -> int:
    overrides = {"format": args.format} if args.format else {}
    payload = _payload(args.payload)
    with _client(args, **overrides) as client:
        if args.ack:
            message_id = client.send_and_wait(args.group, args.type, payload, timeout=args.timeout,
                                              wait_for_supervisor=args.wait_for_supervisor)
        else:
            message_id = client.send(args.group, args.type, payload)
    print(message_id)
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    with _client(args) as client:
        result = client.request(args.group, args.type, payload, timeout=args.timeout,
                                wait_for_supervisor=args.wait_for_supervisor)
    print(json.dumps(result))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from ipcpool.ops.health import read_status, verdict

    config = _config(args)
    status = read_status(config.spool.root)
    ok, reason = verdict(status)
    if ok and config.transport.backend == "redis":  # the local supervisor is fine: is its Redis?
        ok, reason = _redis_reachable(config, reason)
    if args.json:
        print(json.dumps({"healthy": ok, "reason": reason, "status": status}, indent=1))
    else:
        print(printable(reason))  # it may quote a spool error, and so a writer's file name
    return EXIT_OK if ok else EXIT_FAILURE


def _redis_reachable(config: Config, reason: str) -> tuple[bool, str]:
    from ipcpool.transport import make_inspector

    inspector = make_inspector(config)
    try:
        inspector.ping()
    except IpcpoolError as exc:
        return False, str(exc)
    finally:
        inspector.close()
    return True, reason


def cmd_status(args: argparse.Namespace) -> int:
    from ipcpool.ops.health import read_status, supervisor_alive, verdict
    from ipcpool.ops.status import render_table
    from ipcpool.transport import make_inspector

    if args.watch:
        return cmd_top(args)
    config = _config(args)
    status = read_status(config.spool.root)
    healthy = verdict(status)
    inspector = make_inspector(config)
    try:
        if status is None or status.get("state") != "running" or not supervisor_alive(status):
            # The supervisor may be down: what the transport holds is still true.
            status = dict(status or {}, folders=inspector.counts())
        if config.transport.backend == "redis":  # every live supervisor of the cluster, each group's queue
            status = dict(status, cluster={"supervisors": inspector.supervisors(), "groups": inspector.counts()})
    finally:
        inspector.close()
    print(json.dumps(dict(status, healthy=healthy[0], reason=healthy[1]), indent=1) if args.json
          else render_table(status, healthy))
    return EXIT_OK if healthy[0] else EXIT_FAILURE


def cmd_top(args: argparse.Namespace) -> int:
    from ipcpool.liveview import watch

    return watch(_config(args).spool.root)


def build_parser() -> argparse.ArgumentParser:
    from ipcpool.errors_cli import add_errors_command

    parser = argparse.ArgumentParser(prog="ipcpool", description="Supervised worker pool for file-based IPC.")
    parser.add_argument("--version", action="version", version=f"ipcpool {__version__}")
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

    run = command("run", cmd_run, "run the supervisor and its workers")
    run.add_argument("--workers", "-w", type=_workers_arg, help="worker processes (overrides [pool] workers)")
    run.add_argument("--http", type=_listen_arg, metavar="HOST:PORT",
                     help="serve /metrics, /healthz and /readyz there (overrides [http] listen)")
    command("check", cmd_check, "validate the config and import every handler")
    reload = command("reload", cmd_reload, "make the running supervisor re-read its config and replace its "
                                           "workers (SIGHUP); exit 0 when the reload took")
    reload.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the new workers (default 120)")
    for name, func, text in (("send", cmd_send, "publish one message and print its id"),
                             ("request", cmd_request, "send a request and print the response's result as JSON")):
        p = command(name, func, text)
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
        else:
            p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        p.add_argument("--wait-for-supervisor", action="store_true",
                       help="with no supervisor running, wait for one to start (default: say so and exit 1 at "
                            "once; the message stays queued)")
    for name, func, text in (("health", cmd_health, "exit 0 when the pool is healthy, 1 otherwise"),
                             ("status", cmd_status, "show workers, groups and totals")):
        p = command(name, func, text)
        p.add_argument("--json", action="store_true", help="print the whole record as JSON")
        if name == "status":
            p.add_argument("--watch", action="store_true", help="a live view, refreshed every second (ipcpool top)")
    command("top", cmd_top, "a live view of workers and groups, refreshed every second (Ctrl-C leaves)")
    add_errors_command(sub, add_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UnknownGroup) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
