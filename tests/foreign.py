"""Running ipcpool, and writers, as another uid: what the container tests need, as root.

The tests run as root (CI does). A child drops its privileges with ``subprocess``'s
``user``/``group``/``extra_groups``. Root's interpreter and this checkout may sit
where no one else may enter (``/root`` is 0700): :func:`foreign_python` finds an
interpreter of the same version that another uid can run, and puts ipcpool, its
dependencies and the test handlers where that uid can read them (copied into a
world-readable folder only when the originals are out of reach).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HANDLERS = Path(__file__).resolve().parent / "handlers"
PROBE_UID = 10001  # the Dockerfile's ipcpool user
IMPORTS = "import ipcpool.cli, ipcpool.pool.supervisor, ipcpool.pool.worker, psutil, watchdog, msgpack, recorder"


@dataclass(frozen=True)
class ForeignPython:
    python: str
    pythonpath: str  # os.pathsep-joined

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return dict(env, PYTHONPATH=self.pythonpath, HOME="/tmp", **extra)

    def run(self, code: str, *, uid: int, gid: int, groups: tuple[int, ...] = (), cwd: str = "/tmp",
            timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, "-c", code], user=uid, group=gid, extra_groups=list(groups),
                              env=env or self.env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def world_readable_dir(prefix: str) -> Path:
    """A temp folder other uids can enter (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _works(python: str, pythonpath: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        out = subprocess.run([python, "-c", IMPORTS], user=PROBE_UID, group=PROBE_UID, cwd="/tmp",
                             env=dict(env, PYTHONPATH=pythonpath), capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _candidates() -> list[str]:
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [os.path.realpath(sys.executable), shutil.which(minor), f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"]
    return [p for p in dict.fromkeys(found) if p and os.path.exists(p)]


def find_foreign_python(base: Path) -> ForeignPython:
    """An interpreter another uid can run, with what ipcpool needs importable (copied under ``base`` if need be)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as other uids (CI runs as root)")
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    direct = os.pathsep.join(dict.fromkeys([str(REPO), str(HANDLERS), *site]))
    copied = os.pathsep.join([str(base / "lib"), str(base / "handlers"), str(base / "site")])
    for python in _candidates():
        if _works(python, direct):
            return ForeignPython(python, direct)
    if not (base / "site").exists():  # out of reach: copy what must be read into a world-readable folder
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "pip", "pip-*", "_pytest", "pytest*", "hypothesis*")
        shutil.copytree(REPO / "ipcpool", base / "lib" / "ipcpool", ignore=ignore)
        shutil.copytree(HANDLERS, base / "handlers", ignore=ignore)
        for folder in dict.fromkeys(site):
            shutil.copytree(folder, base / "site", ignore=ignore, dirs_exist_ok=True)
        for path in base.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    for python in _candidates():
        if _works(python, copied):
            return ForeignPython(python, copied)
    message = (f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid {PROBE_UID} can run "
               f"(tried {_candidates()}); Debian: apt-get install python3")
    if os.environ.get("IPCPOOL_REQUIRE_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)
