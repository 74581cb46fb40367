"""The transport seam holds: nothing above ``ipcpool.transport`` imports a backend, watchdog or redis.

Checked twice: statically (every import statement in every module outside the
transport package) and at run time (importing the pool, the worker, the client
and the command line in a fresh interpreter loads no backend).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ipcpool"
FORBIDDEN = ("ipcpool.transport.spool", "ipcpool.transport.redis", "watchdog", "redis")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_module_above_the_seam_imports_a_backend():
    above = [p for p in PACKAGE.rglob("*.py") if "transport" not in p.relative_to(PACKAGE).parts]
    assert len(above) > 15
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if _forbidden(n)) for p in above}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_seam_module_itself_names_backends_only_lazily():
    tree = ast.parse((PACKAGE / "transport" / "__init__.py").read_text())
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    top_level |= {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not [n for n in top_level if _forbidden(n)]


def test_importing_the_pool_loads_no_backend():
    code = ("import sys; import ipcpool, ipcpool.supervisor, ipcpool.worker, ipcpool.client, ipcpool.cli, "
            "ipcpool.compat, ipcpool.ops.status; "
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
