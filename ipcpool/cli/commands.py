"""The sub-commands ``run``, ``check``, ``reload``, ``send``, ``request``, ``health``, ``status`` and ``top``.

Each is one small function of the parsed arguments returning an exit code
(errors.EXIT_*); what they print for a person is drawn by ``views`` and
``liveview``. The ``errors`` sub-commands are in ``deadletters``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ipcpool.config import Config, load_config, ordering_lease_advice
from ipcpool.errors import EXIT_FAILURE, EXIT_OK, ConfigError, HandlerNotFound, IpcpoolError
from ipcpool.ops.logs import setup_logging
from ipcpool.ops.terminal import printable

log = logging.getLogger("ipcpool")


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


def cmd_run(args: argparse.Namespace) -> int:
    from ipcpool.pool.supervisor import Supervisor
    from ipcpool.transport import preflight

    config = _config(args)
    setup_logging(config.log.format)
    os.umask(0o077 if config.spool.mode == "private" else 0o007)
    preflight(config)
    advice = ordering_lease_advice(config)
    if advice:
        log.warning("%s", advice)
    log.info("starting ipcpool supervisor config=%s root=%s workers=%d", args.config,
             os.path.abspath(config.spool.root), config.pool.workers)
    return Supervisor(config, reread=lambda: _config(args)).run()


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to the supervisor owning the root, then its verdict from status.json."""
    from ipcpool.cli.reload import ask_reload

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
    advice = ordering_lease_advice(config)
    if advice:
        print(advice, file=sys.stderr)
    schedules = f", {len(config.schedules)} schedules" if config.schedules else ""
    print(f"{args.config}: ok (root {config.spool.root}, {config.pool.workers} workers, "
          f"{len(handlers)} handlers: {', '.join(sorted(handlers)) or 'none'}{schedules})")
    return EXIT_OK


def _client(args: argparse.Namespace, **overrides: Any) -> Any:
    from ipcpool.client import Client

    return Client.from_config(_config(args), getattr(args, "from_group", None) or "main", **overrides)


def cmd_send(args: argparse.Namespace) -> int:
    overrides = {"format": args.format} if args.format else {}
    payload = _payload(args.payload)
    timing = _window(args)  # before the client: a window that can never open exits 2, nothing sent
    with _client(args, **overrides) as client:
        if args.ack:
            message_id = client.send_and_wait(args.group, args.type, payload, timeout=args.timeout,
                                              wait_for_supervisor=args.wait_for_supervisor, timing=timing,
                                              ordering_key=args.ordering_key)
        else:
            message = client.prepare(args.group, args.type, payload, timing=timing, ordering_key=args.ordering_key)
            client.publish(message)
            message_id = message.message_id
    print(message_id)
    return EXIT_OK


def _window(args: argparse.Namespace) -> dict[str, str]:
    """``--delay``/``--not-before`` and ``--ttl``/``--expires-at`` as envelope keys; BadWindow (exit 2) when they
    are not durations or times, or can never open."""
    from ipcpool.msgtime import BadWindow, window
    from ipcpool.records import parse_duration

    def duration(text: str | None) -> float | None:
        try:
            return None if text is None else parse_duration(text)
        except ValueError as exc:
            raise BadWindow(str(exc)) from None

    return window(delay=duration(args.delay), not_before=args.not_before, ttl=duration(args.ttl),
                  expires_at=args.expires_at)


def cmd_request(args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    with _client(args) as client:
        result = client.request(args.group, args.type, payload, timeout=args.timeout,
                                wait_for_supervisor=args.wait_for_supervisor)
    print(json.dumps(result))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from ipcpool.localroot import read_status
    from ipcpool.ops.health import judge

    config = _config(args)
    status = read_status(config.spool.root)
    # The local supervisor may be fine while its Redis is not: looked at from here too.
    reach = (lambda: _redis_unreachable(config)) if config.transport.backend == "redis" else None
    verdict = judge(status, reach=reach)
    if args.json:
        print(json.dumps({"healthy": verdict.healthy, "reason": verdict.reason, "status": status}, indent=1))
    else:
        print(printable(verdict.reason))  # it may quote a spool error, and so a writer's file name
    return EXIT_OK if verdict.healthy else EXIT_FAILURE


def _redis_unreachable(config: Config) -> str | None:
    from ipcpool.transport import make_inspector

    inspector = make_inspector(config)
    try:
        inspector.ping()
    except IpcpoolError as exc:
        return str(exc)
    finally:
        inspector.close()
    return None


def cmd_status(args: argparse.Namespace) -> int:
    from ipcpool.cli.views import render_table
    from ipcpool.localroot import read_status
    from ipcpool.ops.health import judge, supervisor_alive
    from ipcpool.transport import make_inspector

    if args.watch:
        return cmd_top(args)
    config = _config(args)
    status = read_status(config.spool.root)
    verdict = judge(status)
    inspector = make_inspector(config)
    try:
        if status is None or status.get("state") != "running" or not supervisor_alive(status):
            # The supervisor may be down: what the transport holds is still true.
            status = dict(status or {}, folders=inspector.counts())
        if config.transport.backend == "redis":  # every live supervisor of the cluster, each group's queue
            status = dict(status, cluster={"supervisors": inspector.supervisors(), "groups": inspector.counts()})
    finally:
        inspector.close()
    if args.json and config.schedules:  # as recorded now, with or without a supervisor (`ipcpool schedule list`)
        from ipcpool.cli.schedules import schedule_views

        status = dict(status, schedules=schedule_views(config))
    print(json.dumps(dict(status, healthy=verdict.healthy, reason=verdict.reason), indent=1) if args.json
          else render_table(status, verdict))
    return EXIT_OK if verdict.healthy else EXIT_FAILURE


def cmd_top(args: argparse.Namespace) -> int:
    from ipcpool.cli.liveview import watch

    return watch(_config(args).spool.root)
