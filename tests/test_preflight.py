"""`ipcpool run` refuses an unsafe spool before it starts, saying how to fix it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import write_config


def _run(config, env, timeout=30):
    return subprocess.run([sys.executable, "-m", "ipcpool", "run", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_world_writable_root_is_refused(tmp_path, root, env):
    root.mkdir()
    root.chmod(0o777)
    out = _run(write_config(tmp_path / "c.toml", root), env)
    assert out.returncode == 1
    assert "world-writable" in out.stderr and "chmod o-w" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_root_owned_by_another_user_is_refused(tmp_path, root, env):
    """The root (not a group: one group only stops itself, see test_containers.py) owned by another user
    cannot be served at all: the start stops, naming the owner and the fix."""
    root.mkdir(parents=True)
    os.chown(root, 65534, 65534)
    out = _run(write_config(tmp_path / "c.toml", root), env)
    assert out.returncode == 1
    assert "owned by uid 65534" in out.stderr and "chown" in out.stderr


def test_symlinked_root_is_refused(tmp_path, env):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    out = _run(write_config(tmp_path / "c.toml", link), env)
    assert out.returncode == 1
    assert "symbolic link" in out.stderr
