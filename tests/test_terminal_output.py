"""Text a message's writer chose never reaches an operator's terminal raw (issue 23, item 10).

A writer controls an envelope's ``type``, a body that is not JSON, a file's name
(a legacy message's id), and what an external heartbeat says. ``errors list``,
``errors show``, ``status`` and ``top`` print those: each runs here as the real
CLI in a subprocess, piped and on a pseudo-terminal, and no escape sequence (ESC,
OSC 0 retitling the window, OSC 52 writing the clipboard, a C1 CSI, DEL, a bidi
override) may come out raw; each must be shown escaped instead, and rich markup
in such a string must be shown, not obeyed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import Terminal, records, run_cli, wait_until, write_config

CLEAR = "\x1b[2J"  # erase the screen
TITLE = "\x1b]0;pwned\x07"  # OSC 0: retitle the window
CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"  # OSC 52: put "pwned" on the clipboard
C1_CSI = "\x9b31m"  # CSI as one C1 character: red from here on
RLO = "\u202e"  # right-to-left override: what follows is shown reversed (trojan source)
MARKUP = "[red]r[link=https://evil.example]L"  # rich markup: a style, a hyperlink
HOSTILE_TYPE = CLEAR + TITLE + CLIPBOARD + C1_CSI + RLO + "[red]r"  # 41 characters: a record keeps 64
LINK = "[link=https://evil.example]L[/link]"

RAW = ("\x1b", "\x07", "\x9b", RLO, "\x7f")  # none of these may come out
ESCAPED_TYPE = ("\\x1b[2J", "\\x1b]0;pwned\\x07", "\\x1b]52;c;cHduZWQ=\\x07", "\\u009b31m", "\\u202e", "[red]r")


def _drop(root: Path, name: str, body: bytes, group: str = "main") -> None:
    """A writer's file, written in tmp/ and renamed into messages/ as writers do."""
    staged = root / group / "tmp" / "staged"
    staged.write_bytes(body)
    os.rename(staged, root / group / "messages" / name)


def _clean(text: str, where: str) -> None:
    found = [c for c in RAW if c in text]
    assert not found, f"raw {found!r} reached {where}:\n{text!r}"


def _clean_terminal(raw: bytes, where: str, *, styled: bool = False) -> None:
    """What a terminal received: no C1, no bidi override, no BEL, and no ESC at all unless the program
    styles its own output (rich), then no OSC (``ESC ]``: title, clipboard, hyperlink) and no ESC [2J."""
    text = raw.decode("utf-8", "replace")
    hostile = ["\x9b", RLO, "\x07", "\x7f", "\x1b]", CLEAR] if styled else ["\x1b", "\x9b", RLO, "\x07", "\x7f"]
    found = [h for h in hostile if h in text]
    assert not found, f"raw {found!r} reached the terminal of {where}:\n{text[-3000:]!r}"


def _on_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, Terminal]:
    term = Terminal(argv, env, cwd, columns=240)
    try:
        return term.wait(60), term
    finally:
        term.close()


def test_errors_list_and_show_escape_what_writers_chose(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record"})
    sup = supervisor_factory(config)
    # An envelope whose type is hostile (invalid, so quarantined, its type recorded as the writer gave it).
    _drop(root, "hostile-type.json", json.dumps({"id": "hostile-type", "type": HOSTILE_TYPE,
                                                 "payload": {"note": CLIPBOARD + C1_CSI + RLO + LINK}}).encode())
    # A body that is not JSON: shown as it is.
    _drop(root, "hostile-body.json", ("not json: " + TITLE + CLIPBOARD + CLEAR + C1_CSI + RLO + "\x7f" + LINK
                                      + "\r\nsecond line\x1b[8m hidden").encode())
    # A legacy message (no handler): its id is its file name, which the writer chose.
    _drop(root, f"hostile-name{TITLE}{RLO}.json", b'{"n": 1}')
    wait_until(lambda: len(list((root / "main" / "errors").glob("*.error.json"))) == 3, 30,
               message="three quarantined")
    assert sup.stop() == 0
    c = ("--config", str(config))
    ipcpool = [sys.executable, "-m", "ipcpool"]

    listed = run_cli(env, tmp_path, "errors", "list", *c)
    assert listed.returncode == 0, listed.stderr
    _clean(listed.stdout + listed.stderr, "errors list")
    line = next(x for x in listed.stdout.splitlines() if "hostile-type" in x)
    for escaped in ESCAPED_TYPE:
        assert escaped in line, (escaped, line)
    assert "hostile-name\\x1b]0;pwned\\x07\\u202e" in listed.stdout
    code, term = _on_terminal([*ipcpool, "errors", "list", *c], env, tmp_path)
    assert code == 0
    _clean_terminal(term.raw, "errors list")
    assert "\\x1b]52;c;cHduZWQ=\\x07" in term.screen

    as_json = run_cli(env, tmp_path, "errors", "list", "--json", *c)
    _clean(as_json.stdout, "errors list --json")  # JSON escapes them itself
    assert {e["type"] for e in json.loads(as_json.stdout)} >= {HOSTILE_TYPE}

    shown = run_cli(env, tmp_path, "errors", "show", "hostile-type", *c)
    assert shown.returncode == 0, shown.stderr
    _clean(shown.stdout + shown.stderr, "errors show (a hostile type)")
    for escaped in ESCAPED_TYPE:
        assert escaped in shown.stdout, (escaped, shown.stdout)
    # The body is JSON: pretty-printed, JSON escapes ESC itself; C1 and the override are escaped here.
    assert '"note": "\\u001b]52;c;cHduZWQ=\\u0007\\u009b31m\\u202e' + LINK + '"' in shown.stdout, shown.stdout

    body = run_cli(env, tmp_path, "errors", "show", "hostile-body", *c)
    assert body.returncode == 0, body.stderr
    _clean(body.stdout + body.stderr, "errors show (a body that is not JSON)")
    assert ("not json: \\x1b]0;pwned\\x07\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\u009b31m\\u202e\\x7f" + LINK + "\\r"
            in body.stdout), body.stdout
    assert "    second line\\x1b[8m hidden" in body.stdout.splitlines(), "a newline in a body is one"
    code, term = _on_terminal([*ipcpool, "errors", "show", "hostile-body", *c], env, tmp_path)
    assert code == 0
    _clean_terminal(term.raw, "errors show")
    assert "second line\\x1b[8m hidden" in term.screen

    named = run_cli(env, tmp_path, "errors", "show", "hostile-name", *c)
    assert named.returncode == 0, named.stderr
    _clean(named.stdout + named.stderr, "errors show (a hostile file name)")
    assert "hostile-name\\x1b]0;pwned\\x07\\u202e" in named.stdout

    for wanted in ("hostile-type", "hostile-body"):
        out = run_cli(env, tmp_path, "errors", "show", wanted, "--json", *c)
        assert out.returncode == 0, out.stderr
        _clean(out.stdout, "errors show --json")
    assert json.loads(run_cli(env, tmp_path, "errors", "show", "hostile-type", "--json", *c).stdout)[0][
        "error"]["type"] == HOSTILE_TYPE

    ambiguous = run_cli(env, tmp_path, "errors", "show", "hostile", *c)  # three ids start with it
    assert ambiguous.returncode == 1
    _clean(ambiguous.stdout + ambiguous.stderr, "errors show (an ambiguous prefix)")
    assert "hostile-name\\x1b]0;pwned\\x07\\u202e" in ambiguous.stderr


def test_status_and_top_escape_a_running_message_and_an_external_heartbeat(tmp_path, root, env,
                                                                           supervisor_factory):
    """A running message whose id (a legacy message's file name) carries escapes and markup, and whose
    type is as hostile as a valid type can be (``x:warning:``, an emoji code to rich); routed through
    ``"*"`` to a handler that waits for the test's gate. An external heartbeat whose process id and
    status are escape sequences."""
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record", "*": "recorder:record"},
                          sections={"pool": {"handler_timeout": 300.0}})  # the gate is held while the CLI runs
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    stem = f"run-{TITLE}{C1_CSI}{RLO}[red]r[link=x]L:warning:"
    _drop(root, "hb-hostile.json",
          b'{"type":"heartbeat","payload":{"processId":"\\u001b]0;pwned\\u0007","status":"\\u001b[2J"}}')
    # First the heartbeat, recorded: behind the gated message in a worker's hands, it would wait for the gate.
    wait_until(lambda: sup.status()["externalHeartbeats"], 30, message="the heartbeat recorded")
    _drop(root, f"{stem}.json", json.dumps({"type": "x:warning:", "gate": str(gate)}).encode())
    # Its type is known once the worker's heartbeat told it (before that, status has only the id its name gives).
    wait_until(lambda: any((w.get("currentMessage") or {}) == {"id": stem, "type": "x:warning:", "group": "main"}
                           for w in sup.status()["workers"]), 30, message="the hostile message running, its type told")
    escaped_id = "run-\\x1b]0;pwned\\x07\\u009b31m\\u202e[red]r[link=x]L:warning:"
    c = ("--config", str(config))
    try:
        status = run_cli(env, tmp_path, "status", *c)
        assert status.returncode == 0, status.stderr
        _clean(status.stdout + status.stderr, "status")
        assert f"x:warning: {escaped_id} (" in status.stdout, status.stdout
        heartbeat = next(x for x in status.stdout.splitlines() if x.startswith("main ") and "pwned" in x)
        assert "\\x1b]0;pwned\\x07" in heartbeat and "\\x1b[2J" in heartbeat, heartbeat
        code, term = _on_terminal([sys.executable, "-m", "ipcpool", "status", *c], env, tmp_path)
        assert code == 0
        _clean_terminal(term.raw, "status")
        assert escaped_id in term.screen

        as_json = run_cli(env, tmp_path, "status", "--json", *c)
        _clean(as_json.stdout, "status --json")
        assert json.loads(as_json.stdout)["externalHeartbeats"][0]["processId"] == "\x1b]0;pwned\x07"

        for command in (["top"], ["status", "--watch"]):
            term = Terminal([sys.executable, "-m", "ipcpool", *command, *c], env, tmp_path, columns=240)
            try:
                term.wait_for(escaped_id)  # shown, escaped, with its markup and emoji code as text
                term.wait_for("x:warning:")
                assert term.ctrl_c() == 0
            finally:
                term.close()
            _clean_terminal(term.raw, " ".join(command), styled=True)
    finally:
        gate.touch()
    wait_until(lambda: any(r["id"] == stem for r in records(tmp_path)), 30, message="the gated message handled")
    assert sup.stop() == 0


def test_the_process_title_of_a_worker_running_a_hostile_message_is_escaped(tmp_path, root, env,
                                                                           supervisor_factory):
    """``ps`` shows ``ipcpool: worker <slot> <type> <id>``: the id a writer chose, escaped."""
    config = write_config(tmp_path / "c.toml", root, handlers={"*": "recorder:record"},
                          sections={"pool": {"workers": 1, "handler_timeout": 300.0}})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    stem = f"t-{TITLE}{RLO}"
    _drop(root, f"{stem}.json", json.dumps({"gate": str(gate)}).encode())
    try:
        pid = wait_until(lambda: next((r["pid"] for r in records(tmp_path) if r["id"] == stem), None), 30,
                         message="the hostile message running")

        def title() -> str:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").replace("\0", " ")

        shown = wait_until(lambda: "legacy" in (t := title()) and t, 30, message="the title naming the message")
        _clean(shown, "the worker's process title")
        assert "t-\\x1b]0;pwned\\x07\\u202e" in shown, shown
    finally:
        gate.touch()
    assert sup.stop() == 0


def test_printable_escapes_every_unsafe_character_and_nothing_else():
    from ipcpool.ops.terminal import printable

    unsafe = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
              *range(0x2066, 0x206A), 0x2028, 0x2029, 0xD800, 0xDC80, 0xDFFF]
    for code in unsafe:
        shown = printable(f"a{chr(code)}b")
        assert chr(code) not in shown and shown.startswith("a\\") and shown.endswith("b"), (hex(code), shown)
    assert printable("\x1b\x9b\u202e\t\r\n") == "\\x1b\\u009b\\u202e\\t\\r\\n"
    assert printable("one\ntwo\r\n", newlines=True) == "one\ntwo\\r\n"
    kept = "plain ASCII [red]x[/red] :warning: \\x1b é 日本 🙂 \u200d"
    assert printable(kept) == kept, "only what a terminal would act on is escaped"
    assert printable(printable("\x1b]52;c;x\x07")) == printable("\x1b]52;c;x\x07"), "escaping twice changes nothing"


def test_status_on_redis_escapes_and_survives_a_forged_cluster_record(tmp_path, root, env, redis_url, redis_prefix):
    """Any client that may send on a Redis may write a ``<prefix>:supervisor:*`` record: ``ipcpool status``
    prints every field of it escaped, and a field of the wrong type costs a figure, not the command."""
    import redis

    config = write_config(tmp_path / "c.toml", root, sections={"transport": {"backend": "redis"},
                                                              "redis": {"url": redis_url, "prefix": redis_prefix}})
    client = redis.Redis.from_url(redis_url)
    forged = {"evil": {"state": HOSTILE_TYPE, "supervisor": {"uptime": HOSTILE_TYPE},
                       "workers": [{"handled": 3}, {"handled": "x"}, "not a worker"],
                       "transport": {"consumer": "evil" + CLIPBOARD}},
              "odd": {"state": "running", "supervisor": "nobody", "workers": "none", "transport": "spool",
                      "spool": ["not", "stats"]}}
    try:
        for name, record in forged.items():
            client.set(f"{redis_prefix}:supervisor:{name}", json.dumps(record), ex=120)
        out = run_cli(env, tmp_path, "status", "--config", str(config))
        assert "Traceback" not in out.stderr, out.stderr
        assert not [c for c in RAW if c in out.stdout], out.stdout
        assert "evil\\x1b]52;c;cHduZWQ=\\x07" in out.stdout and "\\x1b[2J" in out.stdout
        row = next(line for line in out.stdout.splitlines() if line.startswith("evil"))
        assert row.split()[2:4] == ["2", "3"], row  # two workers that are records, 3 handled between them
    finally:
        client.delete(*(f"{redis_prefix}:supervisor:{name}" for name in forged))
        client.close()
