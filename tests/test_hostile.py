"""Hostile and broken writers: the pool stays up, bad files end in errors/, nothing outside the spool changes.

One supervisor runs for the whole module (it is the thing under attack); each
test throws one kind of bad input at it and checks where it ended. The last
test checks the targets outside the spool are byte-for-byte unchanged and the
supervisor is still healthy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import SupervisorProcess, wait_until, write_config

import ipcpool
from ipcpool.transport.spool.spool import Spool

pytestmark = pytest.mark.xdist_group("hostile")


class Fixture:
    def __init__(self, base: Path, root: Path, sup: SupervisorProcess, env: dict[str, str]) -> None:
        self.base = base
        self.root = root
        self.sup = sup
        self.env = env
        self.outside = base / "outside"

    @property
    def messages(self) -> Path:
        return self.root / "main" / "messages"

    def errors(self, group: str = "main") -> dict[str, dict[str, Any]]:
        """original file name -> error record."""
        out = {}
        folder = self.root / group / "errors"
        for name in os.listdir(folder):
            if name.endswith(".error.json"):
                record = json.loads((folder / name).read_text())
                out[record["originalName"]] = record
        return out

    def drop(self, name: str, data: bytes, group: str = "main") -> None:
        tmp = self.root / group / "tmp" / f".{name}.part"
        tmp.write_bytes(data)
        os.rename(tmp, self.root / group / "messages" / name)

    def wait_error(self, name: str, group: str = "main", timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(lambda: self.errors(group).get(name), timeout, message=f"{name} in errors/")

    def gone_from_messages(self, name: str) -> bool:
        return not (self.messages / name).exists() and not (self.root / "main" / "processing" / name).exists()


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "ipc"
    (base / "records").mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"type": "task", "payload": {"secret": True}}))
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "handlers"), str(Path(__file__).parent.parent)])
    env["IPCPOOL_TEST_RECORDS"] = str(base / "records")
    env.pop("IPCPOOL_ROOT", None)
    config = write_config(base / "c.toml", root, groups=["main", "other", "strict"],
                          sections={"spool": {"max_message_bytes": 4096, "settle_time": 0.2}},
                          handlers={"task": "recorder:record", "legacy": "recorder:record",
                                    "command": "recorder:record"})
    with open(config, "a") as handle:
        handle.write('\n[groups.strict]\nallowed_types = ["task"]\n')
    sup = SupervisorProcess(config, base, env, base / "supervisor.log").start()
    fixture = Fixture(base, root, sup, env)
    fixture.before = _checksums(outside)  # type: ignore[attr-defined]
    yield fixture
    assert sup.stop() == 0


def test_symlink_to_a_file_outside_is_quarantined_not_followed(hostile: Fixture) -> None:
    os.symlink(hostile.outside / "passwd", hostile.messages / "link-out.json")
    record = hostile.wait_error("link-out.json")
    assert "symbolic link" in record["reason"]
    assert (hostile.outside / "passwd").exists()
    moved = hostile.root / "main" / "errors" / record["file"]
    assert moved.is_symlink(), "the link itself was moved, not its target"


def test_symlink_to_another_groups_file_is_quarantined(hostile: Fixture) -> None:
    other = hostile.root / "other" / "tmp" / "victim.json"
    other.write_text(json.dumps({"type": "task", "payload": {}}))
    os.symlink(other, hostile.messages / "link-group.json")
    assert "symbolic link" in hostile.wait_error("link-group.json")["reason"]
    assert other.exists()


def test_symlink_to_a_fifo_does_not_block(hostile: Fixture) -> None:
    fifo = hostile.outside / "fifo"
    os.mkfifo(fifo)
    os.symlink(fifo, hostile.messages / "link-fifo.json")
    assert "symbolic link" in hostile.wait_error("link-fifo.json")["reason"]


def test_fifo_socket_and_hard_link_are_refused_and_a_directory_left_alone(hostile: Fixture) -> None:
    os.mkfifo(hostile.messages / "a-fifo.json")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = hostile.root / "main" / "tmp" / "s.sock"
    sock.bind(str(sock_path))
    os.rename(sock_path, hostile.messages / "a-socket.json")
    (hostile.messages / "a-dir.json").mkdir()
    target = hostile.root / "main" / "tmp" / "hard-target.json"
    target.write_text(json.dumps({"type": "task", "payload": {}}))
    os.link(target, hostile.messages / "a-hardlink.json")
    assert "FIFO" in hostile.wait_error("a-fifo.json")["reason"]
    assert "socket" in hostile.wait_error("a-socket.json")["reason"]
    assert "hard link" in hostile.wait_error("a-hardlink.json")["reason"]
    sock.close()
    assert target.read_text().startswith("{")
    # A directory is no message: it is left where it is (as a rescan leaves it), never moved to errors/.
    assert (hostile.messages / "a-dir.json").is_dir()
    assert not [n for n in os.listdir(hostile.root / "main" / "errors") if n.startswith("a-dir")]


def test_oversize_message_is_refused_before_reading(hostile: Fixture) -> None:
    hostile.drop("big.json", b'{"type":"task","payload":"' + b"x" * 10000 + b'"}')
    assert "too large" in hostile.wait_error("big.json")["reason"]


BAD_CONTENT: dict[str, tuple[bytes, str]] = {
    "truncated.json": (b'{"type": "task", "payload": {"a": 1}', "invalid JSON"),
    "dupkeys.json": (b'{"type": "task", "type": "command", "payload": {}}', "duplicate key"),
    "nan.json": (b'{"type": "task", "payload": NaN}', "NaN"),
    "inf.json": (b'{"type": "task", "payload": Infinity}', "Infinity"),
    "hugeint.json": (b"{\"type\": \"task\", \"payload\": " + b"9" * 2000 + b"}", "digits"),
    "deep.json": (b"[" * 1000 + b"]" * 1000, "nested deeper"),
    "latin1.json": (b'{"type": "task", "payload": "caf\xe9"}', "not UTF-8"),
    "badtype.json": (b'{"type": 5, "payload": {}}', "type must be"),
    "badack.json": (b'{"id": "x1", "type": "task", "payload": {}, "requiresAck": "yes"}', "requiresAck"),
    "badid.json": (b'{"id": "../../etc/passwd", "type": "task", "payload": {}}', "id must be"),
    "nulid.json": (b'{"id": "a\\u0000b", "type": "task", "payload": {}}', "id must be"),
    "badreply.json": (b'{"id": "r1", "type": "task", "payload": {}, "replyTo": "../x"}', "replyTo"),
    "spoof.json": (b'{"id": "s1", "type": "task", "groupFolder": "other", "payload": {}}', "group mismatch"),
    "unknown.ext": (b"{}", "unsupported file extension"),
    "truncated.msgpack": (msgpack.packb({"type": "task", "payload": {"a": 1}})[:-1], "invalid msgpack"),
    "trailing.msgpack": (msgpack.packb({"type": "task", "payload": {}}) + b"\x00", "trailing bytes"),
    "ext.msgpack": (msgpack.packb({"type": "task", "payload": msgpack.ExtType(5, b"x")}), "extension type"),
    "intkey.msgpack": (msgpack.packb({1: "x"}), "invalid msgpack"),
    "binary.msgpack": (msgpack.packb({"type": "task", "payload": b"\x00\x01"}, use_bin_type=True), "binary"),
    "nanpack.msgpack": (msgpack.packb({"type": "task", "payload": float("nan")}), "NaN"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONTENT))
def test_malformed_content_is_quarantined_with_a_reason(hostile: Fixture, name: str) -> None:
    data, reason = BAD_CONTENT[name]
    hostile.drop(name, data)
    record = hostile.wait_error(name)
    assert reason in record["reason"], record["reason"]


def test_disallowed_type_for_group_is_rejected(hostile: Fixture) -> None:
    hostile.drop("cmd.json", json.dumps({"id": "c1", "type": "command", "payload": {}}).encode(), group="strict")
    assert "not allowed" in hostile.wait_error("cmd.json", group="strict")["reason"]


def test_symlinked_group_folder_is_refused(hostile: Fixture) -> None:
    os.symlink(hostile.outside, hostile.root / "evilgroup")
    os.symlink(hostile.root / "other", hostile.root / "aliasgroup")
    after_rescan = time.time() + 1.5  # the test config rescans every second
    status = wait_until(lambda: (s := hostile.sup.status()) and s["writtenAt"] > after_rescan and s, 20,
                        message="a status written after the next rescan")
    assert "evilgroup" not in status.get("groups", {})
    assert "aliasgroup" not in status.get("groups", {})
    assert not (hostile.outside / "messages").exists(), "no folders created through the link"


def test_invalid_group_names_are_never_used(hostile: Fixture) -> None:
    (hostile.root / ".hidden").mkdir()
    (hostile.root / "bad name").mkdir()
    # A valid folder made after them: once the supervisor has taken it up, it has seen the two bad ones too
    # (their events come first, and every rescan lists the whole root at once).
    (hostile.root / "after-bad-names").mkdir()
    client = ipcpool.Client(hostile.root, "main")
    with pytest.raises(ipcpool.InvalidMessage):
        client.send("../outside", "task", {})
    with pytest.raises(ipcpool.InvalidMessage):
        client.send("main", "task", {}, message_id="../../x")
    status = wait_until(lambda: (s := hostile.sup.status()) and "after-bad-names" in s["groups"] and s, 20,
                        message="the valid folder made after the bad ones taken up")
    assert ".hidden" not in status["groups"] and "bad name" not in status["groups"], sorted(status["groups"])
    assert not (hostile.root / "bad name" / "messages").exists(), "no folders created in an invalid group"


def test_a_good_message_still_flows_after_all_that(hostile: Fixture) -> None:
    client = ipcpool.Client(hostile.root, "main")
    message_id = client.send("main", "task", {"ok": True}, requires_ack=True)
    wait_until(lambda: (hostile.root / "main" / "acks" / f"{message_id}.ack").exists(), 30, message="ack")


def test_writer_in_shared_mode_cannot_forge_acks() -> None:
    """A writer of another uid in the spool's group may publish, but not write acks/, processing/ or errors/."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a writer as another uid")
    base = Path(tempfile.mkdtemp(prefix="ipcpool-shared-"))
    base.chmod(0o755)  # the writer must reach the spool; pytest's own tmp folders are private
    try:
        _check_shared_writer(base / "shared")
    finally:
        shutil.rmtree(base)


def _check_shared_writer(root: Path) -> None:
    spool = Spool(root, mode="shared")
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    gid = 65534  # nogroup
    for dirpath, _dirnames, _ in os.walk(root):
        os.chown(dirpath, 0, gid)
    script = (
        "import json, os, sys\n"
        f"os.setgid({gid}); os.setuid(65534)\n"
        "root = sys.argv[1]\n"
        "results = {}\n"
        "for sub in ('tmp', 'messages', 'acks', 'processing', 'errors', 'responses'):\n"
        "    try:\n"
        "        open(os.path.join(root, 'main', sub, 'x.json'), 'w').close(); results[sub] = 'written'\n"
        "    except PermissionError:\n"
        "        results[sub] = 'refused'\n"
        "try:\n"
        "    os.listdir(os.path.join(root, 'main', 'acks')); results['read-acks'] = 'ok'\n"
        "except PermissionError:\n"
        "    results['read-acks'] = 'refused'\n"
        "print(json.dumps(results))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results["tmp"] == "written" and results["messages"] == "written"
    assert results["acks"] == results["processing"] == results["errors"] == results["responses"] == "refused"
    assert results["read-acks"] == "ok"


def test_zz_nothing_outside_the_spool_changed_and_pool_is_healthy(hostile: Fixture) -> None:
    assert _checksums(hostile.outside) == hostile.before  # type: ignore[attr-defined]
    out = subprocess.run([sys.executable, "-m", "ipcpool", "health", "--config", str(hostile.sup.config)],
                         env=hostile.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert hostile.sup.proc is not None and hostile.sup.proc.poll() is None
