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
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, wait_until, write_config

from ipcpool.metrics import parse, total
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
    spool.ensure_root()
    spool.ensure_group("agent8")
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
    assert "agent8" in status["spool"]["unservedGroups"]
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
