"""``ipcpool errors list | show | retry | purge``: what operators do with ``errors/``.

``show`` prints a record for a person (the reason, how each delivery ended,
the traceback as text, the message); ``--json`` prints it for a program.
Ids may be given by a unique prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ipcpool import records
from ipcpool.cli.progress import steps
from ipcpool.config import load_config
from ipcpool.errors import EXIT_FAILURE, EXIT_OK, ConfigError
from ipcpool.message import GROUP_NAME
from ipcpool.ops.terminal import printable
from ipcpool.transport import make_inspector


def cmd_errors(args: argparse.Namespace) -> int:
    inspector = make_inspector(load_config(args.config))
    try:
        dead = inspector.dead_letters()
        action = args.errors_command
        if action == "list":
            return _list(dead, args)
        if action == "show":
            return _show(dead, args)
        if action == "retry":
            return _retry(dead, args)
        return _purge(dead, args)
    finally:
        inspector.close()


def _list(dead: Any, args: argparse.Namespace) -> int:
    entries = dead.list(args.group)
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=1))
        return EXIT_OK
    for e in entries:
        s = e.summary()
        print(printable(f"{s['time']}  {s['group']}  {s['id']}  {s['type'] or '-'}  attempts={s['attempts']}  "
                        f"{s['reason']}"))
    print(f"{len(entries)} quarantined message(s)", file=sys.stderr)
    return EXIT_OK


def _find(dead: Any, wanted: str, group: str | None) -> tuple[list[records.ErrorEntry], set[str]]:
    """As ``errors show`` and ``retry`` take it: an id, a unique prefix of one, a file (or Redis entry) name,
    or the ``<group>/errors/<name>`` a nack's errorFile and MessageRejected say."""
    if "/errors/" in wanted:
        given = wanted
        group, _, wanted = wanted.partition("/errors/")
        if not GROUP_NAME.match(group):  # never a path: `../../x/errors/y` would reach outside the root
            raise ConfigError(f"invalid group name {group!r} in {given!r}: use <group>/errors/<name>, the group "
                              "1-64 letters, digits, '_' or '-'")
    return dead.find(wanted, group)


def _show(dead: Any, args: argparse.Namespace) -> int:
    matches, ids = _find(dead, args.id, args.group)
    if not matches:
        print(printable(f"no quarantined message with id (or id prefix, or file) {args.id}"), file=sys.stderr)
        return EXIT_FAILURE
    if len(ids) > 1:
        print(printable(f"{args.id!r} is the start of {len(ids)} ids: {', '.join(sorted(ids))}; give more of the id"),
              file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps([{"group": e.group, "file": e.file, "error": e.record, "message": _text(dead, e)}
                          for e in matches], indent=1))
        return EXIT_OK
    if len(matches) > 1:
        print(printable(f"{len(matches)} records share id {next(iter(ids))} (quarantined more than once):") + "\n")
    for n, entry in enumerate(matches):
        if n:
            print()
        print(render(entry, _text(dead, entry)))
    return EXIT_OK


def _text(dead: Any, entry: records.ErrorEntry) -> str | None:
    body = dead.read(entry)
    return body.decode("utf-8", "replace") if body is not None else None


def _retry(dead: Any, args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        raise ConfigError("errors retry: name message ids, or --all")
    entries, failed = [], False
    if args.all:
        entries = dead.list(args.group)
    else:  # each as `errors show` takes it: an id, a unique prefix of one, or a file name
        for wanted in dict.fromkeys(args.ids):
            matches, ids = _find(dead, wanted, args.group)
            if not matches:
                print(printable(f"not in errors/: {wanted}"), file=sys.stderr)
                failed = True
            elif len(ids) > 1:
                print(printable(f"{wanted!r} is the start of {len(ids)} ids: {', '.join(sorted(ids))}; give more "
                                f"of the id"), file=sys.stderr)
                failed = True
            else:
                entries += [e for e in matches if e not in entries]
    with steps("retrying", len(entries)) as progress:
        for e in entries:
            progress.advance()
            if not dead.has_message(e):
                progress.say(printable(f"skipped {e.group}/{e.file}: its error record has no message (purge it)"),
                             error=True)
                continue
            name = dead.retry(e)
            progress.say(printable(f"retried {e.group}/{name}"))
    return EXIT_FAILURE if failed else EXIT_OK


def _purge(dead: Any, args: argparse.Namespace) -> int:
    if not args.all and not args.older_than:
        raise ConfigError("errors purge: give --all or --older-than DURATION (like 7d)")
    entries = dead.list(args.group)
    if args.older_than:
        try:
            entries = records.older_than(entries, records.parse_duration(args.older_than))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if args.dry_run:
        for e in entries:
            print(printable(f"would purge {e.group}/{e.file}  {e.message_id}  {e.record.get('reason')}"))
        print(f"would purge {len(entries)} quarantined message(s); nothing was deleted")
        return EXIT_OK
    with steps("purging", len(entries)) as progress:
        for e in entries:
            dead.purge(e)
            progress.advance()
    print(f"purged {len(entries)} quarantined message(s)")
    return EXIT_OK


def render(entry: records.ErrorEntry, message: str | None) -> str:
    """One record as an operator reads it: fields, each delivery, the traceback as text, the message.

    Writers chose much of it (the type, the id, the body, what a handler raised): every value goes
    through :func:`~ipcpool.ops.terminal.printable`, a newline kept only inside the traceback and the message.
    """
    record = entry.record
    lines = [f"{entry.group}/errors/{printable(entry.file)}"]
    fields = [("id", entry.message_id), ("type", record.get("type") or "-"), ("time", record.get("time")),
              ("reason", record.get("reason")), ("attempts", record.get("attempts")),
              ("deliveries", record.get("deliveries") if not isinstance(record.get("deliveries"), list)
               else len(record["deliveries"])),
              ("worker pid", record.get("workerPid")),
              ("entry", record.get("originalEntry"))]  # Redis: the stream entry a nack's errorFile names
    if entry.inbox != records.MESSAGES:
        fields.insert(2, ("inbox", entry.inbox))
    lines += [f"  {name:<11} {printable(value)}" for name, value in fields if value is not None]
    history = record.get("deliveries")
    if isinstance(history, list):
        lines.append("  deliveries that killed or hung a worker:")
        lines += [printable(f"    {d.get('delivery')}. pid {d.get('workerPid')}: {d.get('ended')} ({d.get('time')})")
                  for d in history if isinstance(d, dict)]
    exception = record.get("exception")
    if isinstance(exception, dict) and exception.get("traceback"):
        lines.append("  traceback:")
        lines += [f"    {line}" for line in _block(str(exception["traceback"]).rstrip("\n"))]
    lines.append("  message:" if message is not None else "  message: (not in errors/ any more)")
    if message is not None:
        lines += [f"    {line}" for line in _block(_pretty(message))]
    return "\n".join(lines)


def _block(text: str) -> list[str]:
    """Lines of a writer's text, escaped first: a carriage return or a form feed is shown, never a line break."""
    return printable(text, newlines=True).split("\n")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
