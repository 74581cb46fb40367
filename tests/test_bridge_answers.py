"""On Redis, a writer that only has files hears back where it dropped its file (issue 26, item 2).

Files dropped into a supervisor's local inbox go into the cluster and may be handled on any host; their
acks, nacks and responses are written back beside them, in that supervisor's local root, as the spool
writes them, across that supervisor's restart in between. The Node client, which reads only files,
works against such a host unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import SupervisorProcess, kill_session, records, require_tool, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent


def _host(tmp_path: Path, name: str, url: str, prefix: str, **pool: Any) -> Path:
    (tmp_path / name).mkdir(exist_ok=True)
    return write_config(tmp_path / name / "c.toml", tmp_path / name / "ipc",
                        sections={"transport": {"backend": "redis"},
                                  "redis": {"url": url, "prefix": prefix, "lease": 2.0},
                                  "pool": {"workers": 1, "prefetch": 1, **pool}})


def _drop(root: Path, message_id: str, **envelope: Any) -> None:
    body = json.dumps({"id": message_id, "type": "task", "payload": {}, **envelope}).encode()
    tmp = root / "main" / "tmp" / f".{message_id}.part"
    tmp.write_bytes(body)
    os.rename(tmp, root / "main" / "messages" / f"{message_id}.json")


@pytest.fixture
def started() -> Any:
    sups: list[SupervisorProcess] = []
    yield sups
    for sup in sups:
        if sup.proc is not None and sup.proc.poll() is None:
            sup.stop()


def test_answers_of_a_bridged_file_come_back_beside_it_from_another_host(tmp_path, env, redis_url, redis_prefix,
                                                                         started):
    """Host a's only worker is busy (a gated message): what is dropped in a's inbox runs on host b, and its
    ack, its response and a refused file's nack appear in a's local root, where their writers look."""
    a_config, b_config = (_host(tmp_path, name, redis_url, redis_prefix) for name in "ab")
    a = SupervisorProcess(a_config, tmp_path, env, tmp_path / "a.log").start()
    started.append(a)
    a_root = tmp_path / "a" / "ipc"
    gate = tmp_path / "gate"
    _drop(a_root, "busy-a", payload={"gate": str(gate)})  # keeps a's only worker busy
    wait_until(lambda: records(tmp_path), 30, message="a's worker busy")
    started.append(SupervisorProcess(b_config, tmp_path, env, tmp_path / "b.log").start())
    _drop(a_root, "acked", requiresAck=True)
    _drop(a_root, "asked", replyTo="main", payload={"result": {"answer": 42}})
    _drop(a_root, "refused", type="nobody-handles-this", requiresAck=True)
    wait_until(lambda: (a_root / "main" / "acks" / "acked.ack").exists(), 30, message="the ack, beside the file")
    wait_until(lambda: (a_root / "main" / "responses" / "asked.json").exists(), 30, message="the response")
    wait_until(lambda: (a_root / "main" / "acks" / "refused.nack").exists(), 30, message="the nack")
    response = json.loads((a_root / "main" / "responses" / "asked.json").read_bytes())
    assert response["payload"] == {"requestId": "asked", "success": True, "result": {"answer": 42}}
    nack = json.loads((a_root / "main" / "acks" / "refused.nack").read_bytes())
    assert nack["outcome"] == "rejected" and "no handler" in nack["reason"]
    assert nack["errorFile"].startswith("main/errors/"), "named as `ipcpool errors show` names it"
    handled_by = {r["id"]: r["pid"] for r in records(tmp_path)}
    assert handled_by["acked"] != handled_by["busy-a"], "handled on the other host"
    gate.touch()


def test_answers_come_back_across_a_restart_of_the_supervisor_that_took_the_file(tmp_path, env, redis_url,
                                                                                 redis_prefix, started):
    """The file is sent on by a, a is SIGKILLed before the answer comes, b handles it, a restarts: a writes the
    ack beside the file (what it waits to write back is kept in Redis, under its consumer name)."""
    a_config, b_config = (_host(tmp_path, name, redis_url, redis_prefix) for name in "ab")
    a = SupervisorProcess(a_config, tmp_path, env, tmp_path / "a.log").start()
    started.append(a)
    a_root = tmp_path / "a" / "ipc"
    gate = tmp_path / "gate"
    _drop(a_root, "later", requiresAck=True, payload={"gate": str(gate)})
    wait_until(lambda: records(tmp_path), 30, message="a's worker runs it")
    kill_session(a.pid)
    a.wait()
    gate.touch()
    started.append(SupervisorProcess(b_config, tmp_path, env, tmp_path / "b.log").start())
    wait_until(lambda: len(records(tmp_path)) == 2, 60, message="b handles it once a's lease lapsed")
    assert not (a_root / "main" / "acks" / "later.ack").exists()
    started.append(SupervisorProcess(a_config, tmp_path, env, tmp_path / "a2.log").start())
    wait_until(lambda: (a_root / "main" / "acks" / "later.ack").exists(), 30,
               message="a, restarted, writes the ack back beside the file")


NODE_SCRIPT = """
import { request, sendAndWait } from %s;
const root = process.argv[2];
const acked = await sendAndWait('main', 'task', { n: 1 }, { root, ack: { timeoutMs: 30000, maxRetries: 0 } });
const result = await request('main', 'task', { result: 'from redis' }, { root, timeoutMs: 30000 });
console.log(JSON.stringify({ acked, result }));
"""


def test_the_node_client_works_unchanged_against_a_host_on_redis(tmp_path, env, redis_url, redis_prefix, started):
    node = require_tool("node", shutil.which("node"), "Node.js >= 18; Debian: apt-get install nodejs")
    config = _host(tmp_path, "a", redis_url, redis_prefix, workers=2)
    started.append(SupervisorProcess(config, tmp_path, env, tmp_path / "a.log").start())
    script = tmp_path / "agent.mjs"
    script.write_text(NODE_SCRIPT % json.dumps((REPO / "clients" / "node" / "index.js").as_uri()))
    out = subprocess.run([node, str(script), str(tmp_path / "a" / "ipc")], capture_output=True, text=True,
                         timeout=120, env=dict(env, LOG_LEVEL="info"))
    assert out.returncode == 0, out.stdout + out.stderr
    said = json.loads(out.stdout.strip().splitlines()[-1])
    assert said["result"] == "from redis" and said["acked"]
    assert "ACK received" in out.stderr


def test_a_file_the_bridge_refuses_is_answered_beside_it(tmp_path, env, redis_url, redis_prefix, started):
    """A file that never decodes is quarantined in the local errors/ (it is not sent on), and, as on the spool,
    its writer finds a nack beside it: with the sha256 of its bytes, since it carries no timestamp."""
    import hashlib

    config = _host(tmp_path, "a", redis_url, redis_prefix)
    started.append(SupervisorProcess(config, tmp_path, env, tmp_path / "a.log").start())
    root = tmp_path / "a" / "ipc"
    body = b'{"id": "broken", "type": "task", "payload": {'  # cut short, and settled long ago
    tmp = root / "main" / "tmp" / ".broken.part"
    tmp.write_bytes(body)
    os.utime(tmp, (1, 1))
    os.rename(tmp, root / "main" / "messages" / "broken.json")
    wait_until(lambda: (root / "main" / "acks" / "broken.nack").exists(), 30, message="the nack beside the file")
    nack = json.loads((root / "main" / "acks" / "broken.nack").read_bytes())
    assert nack["outcome"] == "rejected" and "invalid JSON" in nack["reason"]
    assert nack["sha256"] == hashlib.sha256(body).hexdigest()
    assert any(n.endswith(".error.json") for n in os.listdir(root / "main" / "errors"))


def test_a_nack_left_by_an_earlier_message_of_the_same_id_does_not_answer_the_new_one(tmp_path, env, redis_url,
                                                                                      redis_prefix, started):
    """Nacks outlive their message ([ack] retention): a message sent again under an id that failed before
    gets its own answer written back (its ack), not the old nack."""
    config = _host(tmp_path, "a", redis_url, redis_prefix)
    started.append(SupervisorProcess(config, tmp_path, env, tmp_path / "a.log").start())
    root = tmp_path / "a" / "ipc"
    nack_path, ack_path = root / "main" / "acks" / "again.nack", root / "main" / "acks" / "again.ack"
    _drop(root, "again", requiresAck=True, timestamp="2026-12-06T00:00:00.000Z", payload={"raise": "first"})
    wait_until(nack_path.exists, 30, message="the first copy's nack")
    first = json.loads(nack_path.read_bytes())
    nack_path.unlink()  # its writer read it
    gate = tmp_path / "gate"
    _drop(root, "again", requiresAck=True, timestamp="2026-12-06T00:00:01.000Z", payload={"gate": str(gate)})
    wait_until(lambda: sum(r["id"] == "again" for r in records(tmp_path)) >= 2, 30, message="the second copy runs")
    assert not nack_path.exists(), f"the old nack written back for the new message: {first}"
    gate.touch()
    wait_until(ack_path.exists, 30, message="the second copy's ack, beside it")
    assert not nack_path.exists()


def test_a_redis_outage_in_the_middle_of_a_bridged_batch_strands_none_of_it(tmp_path, env, private_redis, started):
    """The bridge claims its local files in batches; Redis dies while one is being sent on: what was not sent
    goes back to the inbox with the file that failed, and everything is handled once Redis is back."""
    config = _host(tmp_path, "a", private_redis.url, "outage", workers=2, prefetch=16)
    sup = SupervisorProcess(config, tmp_path, env, tmp_path / "a.log").start()
    started.append(sup)
    root = tmp_path / "a" / "ipc"
    ids = [f"b{n}" for n in range(1500)]
    os.kill(sup.pid, signal.SIGSTOP)  # a backlog builds up in the local inbox
    try:
        for message_id in ids:
            _drop(root, message_id)
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    wait_until(lambda: len(os.listdir(root / "main" / "messages")) < 1300, 30, message="bridging under way")
    private_redis.kill()
    private_redis.start()
    wait_until(lambda: {r["id"] for r in records(tmp_path)} >= set(ids), 120, message="every file handled")
    wait_until(lambda: not [n for n in os.listdir(root / "main" / "processing") if not n.startswith(".")], 30,
               message="nothing left claimed in the local processing/")


@pytest.fixture
def whole_second_filesystem(tmp_path: Path) -> Any:
    """An ext4 with 128-byte inodes, loop-mounted: file times in whole seconds, as on HFS+, FAT, some NFS."""
    mkfs = require_tool("mkfs.ext4", shutil.which("mkfs.ext4"), "Debian: apt-get install e2fsprogs")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run([mkfs, "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        require_tool("a loop mount", None, f"root and a loop device: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_name_reused_within_one_second_on_a_whole_second_filesystem_is_sent_every_time(
        tmp_path, env, redis_url, redis_prefix, started, whole_second_filesystem):
    """A legacy writer reuses one name for files of one size, one after another: the freed inode comes back
    with the same time and size. Each is a message and is sent on; none is taken for the one before."""
    config = write_config(tmp_path / "c.toml", whole_second_filesystem / "ipc",
                          sections={"transport": {"backend": "redis"},
                                    "redis": {"url": redis_url, "prefix": redis_prefix},
                                    "pool": {"workers": 1}})
    started.append(SupervisorProcess(config, tmp_path, env, tmp_path / "a.log").start())
    root = whole_second_filesystem / "ipc"
    for n in range(10, 40):
        body = json.dumps({"id": f"same-{n}", "type": "task", "payload": {}}).encode()
        tmp = root / "main" / "tmp" / ".status.part"
        tmp.write_bytes(body)
        os.rename(tmp, root / "main" / "messages" / "status.json")
        wait_until(lambda: not (root / "main" / "messages" / "status.json").exists(), 10, message="taken")
    wanted = {f"same-{n}" for n in range(10, 40)}
    wait_until(lambda: {r["id"] for r in records(tmp_path)} >= wanted, 30, message="every one of them handled")
