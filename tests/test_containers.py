"""Where agent hosts run: group folders another user owns, Kubernetes volumes, writers under other uids.

The tests run as root (CI does): a folder is given to another uid with chown, and a writer runs as another
uid in a child that drops its privileges.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, wait_until, write_config
from foreign import ForeignPython, find_foreign_python, world_readable_dir
from prometheus_text import parse, total

from ipcpool.transport.spool.spool import Spool

NOBODY = 65534


def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another uid (CI runs as root)")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_group_folder_another_user_owns_stops_that_group_only(tmp_path, root, env, supervisor_factory):
    """It used to stop the start (exit 1: every group for one), and at run time it was skipped without a
    word in status or health, with a warning every rescan. Now the rest is served and it is reported."""
    _root_only()
    spool = Spool(root)
    spool.folders.ensure_root()
    spool.folders.ensure_group("agent8")
    for path in (root / "agent8", *(root / "agent8").iterdir()):
        os.chown(path, NOBODY, NOBODY)
    config = write_config(tmp_path / "c.toml", root, groups=["main", "agent8"],
                          sections={"http": {"listen": "127.0.0.1:0"}})
    sup = supervisor_factory(config)
    address = re.search(r"on http://(\S+)", sup.log()).group(1)  # type: ignore[union-attr]
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task",
                  "--payload", "{}", "--ack")
    assert out.returncode == 0, out.stdout + out.stderr
    first = sup.status()
    assert first is not None
    # A few rescans (every second here), judged by the supervisor's own status writes, then the verdicts.
    wait_until(lambda: (s := sup.status()) and s["writtenAt"] - first["writtenAt"] > 3.5, 30,
               message="three rescans")
    health = run_cli(env, tmp_path, "health", "--config", str(config))
    assert health.returncode == 1, health.stdout
    assert "group agent8 is not served" in health.stdout and f"chown -R {os.geteuid()}" in health.stdout
    status = json.loads(run_cli(env, tmp_path, "status", "--config", str(config), "--json").stdout)
    assert "agent8" in status["transport"]["unservedGroups"]
    table = run_cli(env, tmp_path, "status", "--config", str(config)).stdout
    assert "NOT SERVED: group agent8" in table
    assert _get(f"http://{address}/readyz")[0] == 200, "the served groups keep the pool ready"
    assert total(parse(_get(f"http://{address}/metrics")[1]), "ipcpool_groups_unserved") == 1
    assert sup.log().count("not serving group agent8") == 1, "logged once, not at every rescan"
    # The fix the verdict names: the group is served at the next rescan, and says so once.
    for path in (root / "agent8", *(root / "agent8").iterdir()):
        os.chown(path, os.geteuid(), os.getegid())
    wait_until(lambda: "serving group agent8 now" in sup.log(), 30, message="served once fixed")
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "agent8", "--type", "task",
                  "--payload", "{}", "--ack")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: run_cli(env, tmp_path, "health", "--config", str(config)).returncode == 0, 30,
               message="healthy again")
    # A group folder another user makes while the pool runs (a container as another uid, say; only root could
    # give away one already served): refused when it appears, reported the same way, said once.
    made = tmp_path / "agent9"  # made whole, then renamed in: it appears already owned by that user
    made.mkdir()
    os.chown(made, NOBODY, NOBODY)
    made.rename(root / "agent9")
    wait_until(lambda: "not serving group agent9" in sup.log(), 30, message="the new group refused")
    health = wait_until(lambda: (h := run_cli(env, tmp_path, "health", "--config", str(config))).returncode == 1
                        and h, 30, message="health says so")
    assert "group agent9 is not served" in health.stdout, health.stdout
    wait_until(lambda: (s := sup.status()) and s["writtenAt"] - first["writtenAt"] > 8, 30, message="more rescans")
    assert sup.log().count("not serving group agent9") == 1, "logged once, not at every rescan"
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task",
                  "--payload", "{}", "--ack")
    assert out.returncode == 0, "the other groups are still served: " + out.stdout + out.stderr
    assert sup.stop() == 0


# -- Kubernetes: a volume root owned by root under fsGroup ----------------------------------------------------


@pytest.fixture
def volume() -> Iterator[Path]:
    """A folder shaped as Kubernetes mounts a volume under a pod's fsGroup: root's, setgid, group-writable."""
    base = Path(tempfile.mkdtemp(prefix="ipcpool-volume-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_kubernetes_volume_root_is_accepted_only_in_that_shape(volume):
    from ipcpool.transport.spool.layout import is_volume_root

    _root_only()
    mount = volume / "data"
    mount.mkdir()
    os.chown(mount, 0, os.getegid())
    mount.chmod(0o2775)
    assert is_volume_root(os.stat(mount))
    mount.chmod(0o775)
    assert not is_volume_root(os.stat(mount)), "not setgid: not the fsGroup shape"
    mount.chmod(0o2777)
    assert not is_volume_root(os.stat(mount)), "world-writable: never"
    os.chown(mount, 0, NOBODY)
    mount.chmod(0o2775)
    assert is_volume_root(os.stat(mount)) is (NOBODY in {os.getegid(), *os.getgroups()})
    assert stat.S_IMODE(os.stat(mount).st_mode) == 0o2775


# -- the recipes: writers as other uids, ipcpool as its own user ------------------------------------------------

AGENTS = 4242  # the common group of the shared-mode recipe (docker run --user 1000:4242)
IPCPOOL_UID = 10001  # the Dockerfile's ipcpool user
NODE_UID = 1000  # the official Node images' `node` user


@pytest.fixture(scope="module")
def foreign() -> Iterator[tuple[ForeignPython, Path]]:
    base = world_readable_dir("ipcpool-foreign-")
    try:
        yield find_foreign_python(base), base
    finally:
        shutil.rmtree(base, ignore_errors=True)


class ForeignPool:
    """``ipcpool run`` as another uid (and group), in a folder every uid of the test can reach."""

    def __init__(self, fp: ForeignPython, base: Path, root: Path, *, uid: int, gid: int,
                 groups: tuple[int, ...] = (), **sections: dict[str, object]) -> None:
        self.base, self.root = base, root
        self.records = base / "records"
        self.records.mkdir(exist_ok=True)
        self.records.chmod(0o777)
        self.config = write_config(base / "c.toml", root, sections=sections)
        self.config.chmod(0o644)
        self.log_path = base / "supervisor.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [fp.python, "-m", "ipcpool", "run", "--config", str(self.config)], user=uid, group=gid,
                extra_groups=list(groups), env=fp.env(IPCPOOL_TEST_RECORDS=str(self.records), LOG_LEVEL="info"),
                cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: "Enhanced IPC system started" in self.log() or self.proc.poll() is not None, 60,
                   message="the pool started as its own user")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        return self.proc.wait(10)


WRITER = """
import json, os, sys, time
root, action, message_id = sys.argv[1], sys.argv[2], sys.argv[3]
group = os.path.join(root, "main")
def publish(body):
    tmp = os.path.join(group, "tmp", f".{message_id}.part")
    with open(tmp, "w") as out:
        out.write(body)
    os.rename(tmp, os.path.join(group, "messages", f"{message_id}.json"))
def wait_read(path):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as answer:
                return answer.read()
        except FileNotFoundError:
            time.sleep(0.05)
    raise SystemExit(f"no {path}")
if action == "ack":
    publish(json.dumps({"id": message_id, "type": "task", "payload": {"n": 1}, "requiresAck": True}))
    print(wait_read(os.path.join(group, "acks", f"{message_id}.ack")))
elif action == "request":
    publish(json.dumps({"id": message_id, "type": "task", "payload": {"result": 42}, "replyTo": "main"}))
    print(json.loads(wait_read(os.path.join(group, "responses", f"{message_id}.json")))["payload"]["result"])
elif action == "unreadable":  # written 0600 by another user: ipcpool cannot read it, refuses it with a nack
    os.umask(0o077)
    publish(json.dumps({"id": message_id, "type": "task", "payload": {"n": 1}, "requiresAck": True}))
    nack = json.loads(wait_read(os.path.join(group, "acks", f"{message_id}.nack")))
    print(nack["outcome"], nack["reason"], sep="|")
else:  # not JSON: quarantined, and its writer reads the nack
    publish("this is not JSON")
    print(json.loads(wait_read(os.path.join(group, "acks", f"{message_id}.nack")))["outcome"])
"""


def _write_as(fp: ForeignPython, root: Path, action: str, message_id: str, *, uid: int, gid: int) -> str:
    out = subprocess.run([fp.python, "-c", WRITER, str(root), action, message_id], user=uid, group=gid,
                         extra_groups=[], env=fp.env(), cwd="/tmp", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def test_recipe_a_writer_under_another_uid_in_shared_mode(foreign):
    """`docker run --user 1000:4242` beside `ipcpool run` as its own user, also in group 4242, `[spool] mode =
    "shared"`: the agent's files are claimed, handled, acked and quarantined like any other, and the agent
    reads its ack, its response and its nack."""
    fp, base = foreign
    root = base / "shared-ipc"
    root.mkdir()  # as the README says: `install -d -o ipcpool -g agents -m 2750 data/ipc`
    os.chown(root, IPCPOOL_UID, AGENTS)
    root.chmod(0o2750)
    # Its own primary group, the agents' as a supplementary one (systemd: User=ipcpool, SupplementaryGroups=agents)
    pool = ForeignPool(fp, base, root, uid=IPCPOOL_UID, gid=IPCPOOL_UID, groups=(AGENTS,), spool={"mode": "shared"})
    try:
        assert _write_as(fp, root, "ack", "agent-ack", uid=NODE_UID, gid=AGENTS).endswith("Z")
        assert _write_as(fp, root, "request", "agent-request", uid=NODE_UID, gid=AGENTS) == "42"
        assert _write_as(fp, root, "nack", "agent-bad", uid=NODE_UID, gid=AGENTS) == "rejected"
        # ipcpool's own Client, told no mode: it writes as the root is (setgid: shared), so its file is readable
        sent = fp.run(f"from ipcpool import Client; Client({str(root)!r}, 'main').send_and_wait('main', 'task', "
                      "{'n': 2}, timeout=20); print('acked')", uid=NODE_UID, gid=AGENTS)
        assert sent.stdout.strip() == "acked", sent.stdout + sent.stderr
        ack = root / "main" / "acks" / "agent-ack.ack"
        assert ack.stat().st_gid == AGENTS and stat.S_IMODE(ack.stat().st_mode) == 0o640
    finally:
        assert pool.stop() == 0, pool.log()
    assert "error" not in pool.log().lower().replace("errors/", "").replace("rejected", ""), pool.log()


def test_recipe_a_writer_running_as_root_into_folders_ipcpool_owns(foreign):
    """A container running as root (many images do) writing into a root folder that ipcpool's own user owns
    (private mode): its files, root's and world-readable, are handled; the writer reads the answers."""
    fp, base = foreign
    root = base / "private-ipc"
    root.mkdir()  # `install -d -o ipcpool data/ipc`
    os.chown(root, IPCPOOL_UID, IPCPOOL_UID)
    pool = ForeignPool(fp, base, root, uid=IPCPOOL_UID, gid=IPCPOOL_UID)
    try:
        assert _write_as(fp, root, "ack", "root-ack", uid=0, gid=0).endswith("Z")
        assert _write_as(fp, root, "request", "root-request", uid=0, gid=0) == "42"
        assert _write_as(fp, root, "nack", "root-bad", uid=0, gid=0) == "rejected"
        outcome, reason = _write_as(fp, root, "unreadable", "root-private", uid=0, gid=0).split("|")
        assert outcome == "rejected", outcome
        assert "not readable by the supervisor's user: the file is 0600, owned by uid 0" in reason, reason
        kept = [p.name for p in (root / "main" / "errors").iterdir() if p.name.endswith("root-private.json")]
        assert kept, "the message itself is kept in errors/, not lost"
        assert os.stat(root / "main").st_uid == IPCPOOL_UID
    finally:
        assert pool.stop() == 0, pool.log()


def test_a_pool_starts_on_a_kubernetes_volume_root(foreign):
    """The volume's root as Kubernetes mounts it under `fsGroup: 4242` (root's, setgid, group-writable), and
    ipcpool running as uid 10001 with that supplementary group, as the pod spec in deploy/ sets it."""
    fp, base = foreign
    mount = base / "volume"
    mount.mkdir()
    os.chown(mount, 0, AGENTS)
    mount.chmod(0o2775)
    pool = ForeignPool(fp, base, mount, uid=IPCPOOL_UID, gid=IPCPOOL_UID, groups=(AGENTS,),
                       spool={"mode": "shared"})
    try:
        assert _write_as(fp, mount, "ack", "k8s-ack", uid=NODE_UID, gid=AGENTS).endswith("Z")
        assert os.stat(mount).st_uid == 0 and stat.S_IMODE(os.stat(mount).st_mode) == 0o2775, "left as it was"
    finally:
        assert pool.stop() == 0, pool.log()
