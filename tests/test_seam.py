"""The transport seam holds: nothing above ``ipcpool.transport`` imports a backend, watchdog or redis.

Checked twice: statically (every import statement in every module outside the
transport package) and at run time (importing the pool, the worker, the client,
the command line and the operators' interfaces in a fresh interpreter loads no
backend). And ipcpool's modules import one another without a circle.
"""

from __future__ import annotations

import ast
import re
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
    layers = sorted(_module_name(p) for p in [*(PACKAGE / "ops").glob("*.py"), *(PACKAGE / "cli").glob("*.py")])
    code = ("import sys; import ipcpool, ipcpool.pool.supervisor, ipcpool.pool.worker, ipcpool.client, ipcpool.compat, "
            f"{', '.join(layers)}; "
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_operators_interfaces_and_the_command_line_never_import_a_backend():
    """ops/ and cli/ reach a transport only through the seam (``ipcpool.transport``), lazily imported or not."""
    backends = ("ipcpool.transport.spool", "ipcpool.transport.redis")
    modules = [*(PACKAGE / "ops").glob("*.py"), *(PACKAGE / "cli").glob("*.py")]
    assert len(modules) > 12
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if any(
        n == b or n.startswith(b + ".") for b in backends)) for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


# -- no import circle ------------------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The ipcpool modules ``path`` imports while it loads: every import statement outside a function body,
    those under ``if TYPE_CHECKING:`` included (a circle of annotations is a circle of design too).
    ``from package import name`` counts the submodule when ``name`` is one, else the package. A package's
    parents are not counted: Python loads them first whatever the statement says."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue  # imported when called: the way to break a circle at load time
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                             for alias in node.names)
            for block in ("body", "orelse", "handlers", "finalbody"):
                inner = getattr(node, block, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(ast.parse(path.read_text(), str(path)).body)
    return {m for m in found if m in modules and m != name}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle in ``graph`` (its modules in import order, the first again at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [(start, iter(sorted(graph[start])))]
        while stack:
            node, edges = stack[-1]
            step = next((m for m in edges if m not in done), None)
            if step is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif step in on_path:
                return [*path[path.index(step):], step]
            else:
                stack.append((step, iter(sorted(graph[step]))))
                path.append(step)
                on_path.add(step)
    return None


def test_no_import_circle_among_ipcpool_modules():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _load_time_imports(path, name, set(files)) for name, path in files.items()}
    assert len(graph) > 40 and graph["ipcpool.pool.supervisor"], "the scan found the package and its imports"
    circle = _circle(graph)
    assert circle is None, " -> ".join(circle or [])


def test_the_circle_check_sees_type_checking_imports_and_not_lazy_ones(tmp_path):
    """The check itself: the circle ipcpool.status and ipcpool.supervisor once made, through TYPE_CHECKING."""
    status, supervisor, cli = tmp_path / "status.py", tmp_path / "supervisor.py", tmp_path / "cli.py"
    status.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.supervisor import S\n")
    supervisor.write_text("from pkg.status import build_status\n")
    cli.write_text("def main():\n    from pkg.supervisor import Supervisor\n")
    modules = {"pkg.status", "pkg.supervisor", "pkg.cli"}
    graph = {f"pkg.{p.stem}": _load_time_imports(p, f"pkg.{p.stem}", modules) for p in (status, supervisor, cli)}
    assert graph == {"pkg.status": {"pkg.supervisor"}, "pkg.supervisor": {"pkg.status"}, "pkg.cli": set()}
    assert _circle(graph) == ["pkg.status", "pkg.supervisor", "pkg.status"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


# -- the layers below the seam ---------------------------------------------------------------------------------------

# What a backend may import of ipcpool beside the seam itself: the shared vocabulary (the config, the errors, the
# message, its time window, the ordering rules, dead-letter records, the portable system calls, the local root's
# lock and records, the schedules the config names). Never the pool, the operators' interfaces, the command line,
# the client or another backend.
BELOW_THE_SEAM = ("ipcpool.config", "ipcpool.errors", "ipcpool.localroot", "ipcpool.message", "ipcpool.msgtime",
                  "ipcpool.ordering", "ipcpool.portable", "ipcpool.records", "ipcpool.schedule",
                  "ipcpool.transport.base")
BACKENDS = ("spool", "redis", "memory")


def _backend_offenders(package: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    root = PACKAGE / "transport" / package
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    assert files and all(f.exists() for f in files), package
    own = f"ipcpool.transport.{package}"
    offenders = {}
    for path in files:
        names = {n for n in _imports(path) if n.startswith("ipcpool")}  # lazy ones in function bodies included
        bad = sorted(n for n in names if not any(n == a or n.startswith(a + ".") for a in (own, *allowed)))
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = bad
    return offenders


def test_no_backend_imports_the_pool_the_operators_layer_or_another_backend():
    """Each backend imports only itself and the shared vocabulary below the seam, lazily or not; the bridge
    (local files into Redis) is the one module that imports two backends, openly."""
    for backend in BACKENDS:
        assert _backend_offenders(backend, BELOW_THE_SEAM) == {}, backend
    bridge = ("ipcpool.transport.spool", "ipcpool.transport.redis", *BELOW_THE_SEAM)
    assert _backend_offenders("bridge", bridge) == {}


def test_the_vocabulary_below_the_seam_imports_nothing_above_it():
    for module in BELOW_THE_SEAM:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        above = sorted(n for n in _imports(path) if n.startswith("ipcpool")
                       and not any(n == a or n.startswith(a + ".") for a in BELOW_THE_SEAM))
        assert above == [], module


def test_the_backend_check_sees_an_import_of_the_pool_even_inside_a_function(tmp_path, monkeypatch):
    fake = tmp_path / "ipcpool"
    (fake / "transport" / "memory").mkdir(parents=True)
    (fake / "transport" / "memory" / "x.py").write_text("def f():\n    from ipcpool.supervisor import Supervisor\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _backend_offenders("memory", BELOW_THE_SEAM) == {"transport/memory/x.py": ["ipcpool.supervisor",
                                                                                      "ipcpool.supervisor.Supervisor"]}


# -- sizes a newcomer can read ---------------------------------------------------------------------------------------

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
SAYS_WHY = re.compile(r"\b(over|past|a little over) (500|60) lines\b", re.IGNORECASE)


def test_no_module_over_500_lines_and_no_function_over_60_unless_its_docstring_says_why():
    oversized = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and not SAYS_WHY.search(ast.get_docstring(tree) or ""):
            oversized.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not SAYS_WHY.search(ast.get_docstring(node) or ""):
                    oversized.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert oversized == []
