"""The peers a user would otherwise pick for a directory queue: kombu's filesystem transport and dirq.

Each consumer does what the bare loop does with the peer's own queue
operations: take the message, record, write ``acks/<id>.ack`` by tmp+rename
(so senders can wait for an ack exactly as with ipcpool), then the peer's own
acknowledge (kombu ``message.ack()``, dirq ``lock``/``get``/``remove``). Both
peers poll; the interval is ``--poll`` seconds (kombu's default is 1 s, which
would make every latency figure about the interval; the suite passes 10 ms).

    python scripts/bench_peers.py kombu|dirq consume --work W --groups 1 --records R --poll 0.01
    python scripts/bench_peers.py kombu|dirq produce|roundtrip --work W --group main --count N --out F
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import (
    READY,
    BenchError,
    Proc,
    Recorder,
    add_producer_args,
    child_env,
    envelope,
    group_names,
    make_group_dirs,
    python_argv,
    run_producer,
    run_roundtrip,
    write_ack,
    write_summary,
)

SKIPPED = "skipped (pip install -e '.[bench]')"
Send = Callable[[int, float], str]


def _handled(spool: Path, group: str, message: dict[str, Any], recorder: Recorder) -> None:
    payload = message["payload"]
    recorder.record(payload["i"], payload["t"], time.time())
    if message.get("requiresAck"):
        write_ack(f"{spool}/{group}", message["id"])


# -- kombu (filesystem transport) ------------------------------------------------------------------


def kombu_connection(work: Path, poll: float) -> Any:
    from kombu import Connection

    folder = str(work / "kombu" / "data")
    options = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": str(work / "kombu" / "control"),
               "polling_interval": poll}
    return Connection(transport="filesystem", transport_options=options)


def kombu_consume(work: Path, groups: list[str], recorder: Recorder, poll: float) -> None:
    from kombu import Queue

    spool = work / "spool"

    def on_message(body: Any, message: Any) -> None:
        _handled(spool, message.delivery_info["routing_key"], body, recorder)
        message.ack()

    conn = kombu_connection(work, poll)
    queues = [Queue(g, routing_key=g) for g in groups]
    with conn, conn.Consumer(queues, callbacks=[on_message], accept=["json"]):
        print(READY, flush=True)
        while True:
            try:
                conn.drain_events(timeout=1.0)
            except TimeoutError:
                pass
            except ValueError as exc:
                # kombu's writer is not atomic (open, lock, write) and its reader takes no lock: a file
                # taken while still empty or partial fails to decode, and that message is gone.
                recorder.lost()
                print(f"kombu lost a message (partial read): {exc!r}", flush=True)


def kombu_sender(work: Path, group: str) -> Send:
    producer = kombu_connection(work, 1.0).Producer(serializer="json")

    def send(index: int, t_sent: float) -> str:
        message = envelope(group, index, t_sent)
        producer.publish(message, exchange="", routing_key=group, retry=False)
        return str(message["id"])

    return send


# -- dirq (QueueSimple) ----------------------------------------------------------------------------


def dirq_consume(work: Path, groups: list[str], recorder: Recorder, poll: float) -> None:
    from dirq.QueueSimple import QueueSimple

    spool = work / "spool"
    queues = [(g, QueueSimple(str(work / "dirq" / g))) for g in groups]
    print(READY, flush=True)
    while True:
        handled = 0
        for group, queue in queues:
            name = queue.first()
            while name:
                if queue.lock(name):
                    _handled(spool, group, json.loads(queue.get(name)), recorder)
                    queue.remove(name)
                    handled += 1
                name = queue.next()
        if not handled:
            time.sleep(poll)


def dirq_sender(work: Path, group: str) -> Send:
    from dirq.QueueSimple import QueueSimple

    queue = QueueSimple(str(work / "dirq" / group))

    def send(index: int, t_sent: float) -> str:
        message = envelope(group, index, t_sent)
        queue.add(json.dumps(message).encode())
        return str(message["id"])

    return send


# -- the orchestrator's handles --------------------------------------------------------------------


class PeerSystem:
    script = "bench_peers.py"
    peer = True

    def __init__(self, peer: str, poll: float) -> None:
        self.kind = peer
        self.poll = poll
        self.name = f"{peer} (poll {poll * 1000:g}ms)"

    def skip_reason(self) -> str | None:
        return None if importlib.util.find_spec(self.kind) is not None else SKIPPED

    def prepare(self, work: Path, groups: list[str]) -> None:
        make_group_dirs(work / "spool", groups, ("tmp", "acks"))
        for sub in ("kombu/data", "kombu/control", "kombu/processed", "dirq"):
            (work / sub).mkdir(parents=True, exist_ok=True)

    def start(self, work: Path, groups: list[str], records: Path, *, workers: int, wait_ready: bool = True) -> Proc:
        argv = python_argv(self.script, self.kind, "consume", "--work", str(work), "--groups", str(len(groups)),
                           "--records", str(records), "--poll", str(self.poll))
        # kombu moves each message it takes to tempfile.gettempdir() before deleting it: keep that in work/.
        env = child_env(TMPDIR=str(work / "kombu" / "processed"))
        proc = Proc(argv, work / "consumer.log", env=env, cwd=work)
        if wait_ready:
            proc.wait_for_text(READY, 120.0, f"{self.kind} consumer")
        return proc

    def producer_argv(self, *args: str) -> list[str]:
        return python_argv(self.script, self.kind, *args)

    def ack_dir(self, work: Path, group: str) -> Path:
        return work / "spool" / group / "acks"

    def processes(self, proc: Proc) -> dict[str, list[int]]:
        return {"consumer": [proc.pid]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=("kombu", "dirq"))
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--groups", type=int, default=1)
    c.add_argument("--records", type=Path, required=True)
    c.add_argument("--poll", type=float, default=0.01)
    for role in ("produce", "roundtrip"):
        add_producer_args(sub.add_parser(role))
    args = parser.parse_args(argv)
    if args.role == "consume":
        consume = kombu_consume if args.peer == "kombu" else dirq_consume
        consume(args.work, group_names(args.groups), Recorder(args.records), args.poll)
        return 0
    send = (kombu_sender if args.peer == "kombu" else dirq_sender)(args.work, args.group)
    if args.role == "produce":
        summary = run_producer(send, args.count, args.rate)
    else:
        from bare_loop import AckWaiter

        waiter = AckWaiter(args.work / "spool" / args.group / "acks")
        summary = run_roundtrip(lambda i, t: waiter.wait(send(i, t) + ".ack", args.timeout), args.count,
                                (BenchError,))
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
