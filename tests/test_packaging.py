"""What a user installs: ``python -m build`` makes a wheel and an sdist that install into fresh venvs and run
the shipped config (``ipcpool check``), and the systemd unit verifies against such an install, as its own
comments say to make it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from conftest import REPO, require_tool

pytestmark = pytest.mark.xdist_group("packaging")  # builds and installs: one at a time


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the sdist, built from a copy of the tracked files (never in the checkout itself)."""
    base = tmp_path_factory.mktemp("dist")
    source = base / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run(sys.executable, "-m", "build", "--outdir", base / "dist", source, cwd=base)
    return base / "dist"


def _fresh_install(base: Path, artifact: Path) -> Path:
    env_dir = base / f"venv-{artifact.suffix.strip('.')}"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    _run(env_dir / "bin" / "python", "-m", "pip", "install", "-q", artifact, cwd=base)
    return env_dir


def test_the_wheel_and_the_sdist_install_and_check_the_shipped_config(dist: Path, tmp_path: Path) -> None:
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    with tarfile.open(sdists[0]) as sdist:
        names = sdist.getnames()
        assert any(n.endswith("/configs/prod.toml") for n in names), "the sdist ships the config"
        assert any(n.endswith("/deploy/ipcpool.service") for n in names), "and the deploy files"
        sdist.extractall(tmp_path / "sdist", filter="data")
    config = next((tmp_path / "sdist").glob("*/configs/prod.toml"))
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the handlers must come from the installed package
    elsewhere.mkdir()
    for artifact in (wheels[0], sdists[0]):
        env_dir = _fresh_install(tmp_path, artifact)
        out = _run(env_dir / "bin" / "ipcpool", "check", "--config", config, cwd=elsewhere)
        assert ": ok (" in out.stdout and "11 handlers" in out.stdout, out.stdout


def test_the_systemd_unit_verifies_against_an_install_made_as_it_says(dist: Path, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", shutil.which("systemd-analyze"), "Debian: apt-get install systemd")
    env_dir = _fresh_install(tmp_path, next(dist.glob("*.whl")))
    config = tmp_path / "etc" / "prod.toml"
    config.parent.mkdir()
    shutil.copy(REPO / "configs" / "prod.toml", config)
    _run(env_dir / "bin" / "ipcpool", "check", "--config", config, cwd=tmp_path)
    unit = (REPO / "deploy" / "ipcpool.service").read_text()
    assert "RestartPreventExitStatus=2 3" in unit, "a bad config (2) or a handler that does not import (3): no loop"
    unit = unit.replace("/opt/ipcpool", str(env_dir)).replace("/etc/ipcpool/prod.toml", str(config))
    (tmp_path / "ipcpool.service").write_text(unit)
    _run(analyze, "verify", tmp_path / "ipcpool.service", cwd=tmp_path)


def test_the_launchd_plist_is_a_valid_property_list_that_runs_ipcpool() -> None:
    """deploy/ipcpool.plist, for a Mac host (launchd reads it: no Mac here, so its shape is checked)."""
    import plistlib

    agent = plistlib.loads((REPO / "deploy" / "ipcpool.plist").read_bytes())
    program = agent["ProgramArguments"]
    assert program[0].endswith("/.venv/bin/ipcpool") and program[1:3] == ["run", "--config"]
    assert program[3].endswith("configs/prod.toml") and agent["WorkingDirectory"] in program[3]
    assert agent["KeepAlive"] == {"SuccessfulExit": False}, "restarted after a crash, not after a drain"
    assert agent["ExitTimeOut"] > 30, "SIGTERM drains: launchd must wait longer than [pool] shutdown_grace"
    for limits in ("SoftResourceLimits", "HardResourceLimits"):  # as LimitNOFILE= in the systemd unit
        assert agent[limits]["NumberOfFiles"] >= 8192, "launchd's default of 256 descriptors is too few"
