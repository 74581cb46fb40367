"""The Node.js sender's own tests (``clients/node``, Node's test runner), run against this checkout's ipcpool.

They start real ``ipcpool run`` supervisors and publish, wait and request from Node, as an agent in
a container does; one failing Node test fails this one, with Node's report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import require_tool

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"


def test_the_node_client_suite_passes_against_this_ipcpool():
    node = require_tool("node", shutil.which("node"), "Node.js >= 18; Debian: apt-get install nodejs npm")
    ipcpool = Path(sys.executable).with_name("ipcpool")
    env = dict(os.environ, IPCPOOL_BIN=str(ipcpool) if ipcpool.exists() else "ipcpool", CI="true")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_CLIENT.parent.parent), env.get("PYTHONPATH")) if p)
    tests = sorted(str(p.relative_to(NODE_CLIENT)) for p in (NODE_CLIENT / "test").glob("*.test.mjs"))
    assert tests, "no Node tests found"
    out = subprocess.run([node, "--test", *tests], cwd=NODE_CLIENT, env=env, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    assert "# fail 0" in out.stdout, out.stdout[-5000:]
