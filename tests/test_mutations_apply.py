"""scripts/mutate.py's table still fits the code: every old text occurs exactly once, every named test exists.

Cheap on purpose (no copy, no test run): code that moves or changes must bring
the mutation table along, or this fails; scripts/mutate.py itself proves the
tests catch each mutation.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipcpool_mutate", REPO / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


MUTATE = _load()
MUTATIONS = MUTATE.MUTATIONS


def test_the_table_matches_the_code() -> None:
    assert MUTATE.check_table(MUTATIONS) == []


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_applies_exactly_once_and_names_existing_tests(mutation, tmp_path) -> None:
    text = (REPO / mutation.file).read_text()
    mutated = text
    for old, new in mutation.edits():
        assert text.count(old) == 1, f"{mutation.name}: {old!r} must occur exactly once in {mutation.file}"
        mutated = mutated.replace(old, new)
    assert mutated != text
    compile(mutated, mutation.file, "exec")  # a mutation must still be Python, or it proves nothing
    assert mutation.tests
    for node in mutation.tests:
        path, _, name = node.partition("::")
        function = re.sub(r"\[.*\]\Z", "", name)
        source = (REPO / path).read_text()
        assert re.search(rf"^(?:async )?def {re.escape(function)}\(", source, re.MULTILINE), \
            f"{mutation.name}: no test {function} in {path}"


def test_every_documented_config_key_has_a_mutation() -> None:
    """The README's configuration table, key by key: each is named in some mutation's promise."""
    readme = (REPO / "README.md").read_text()
    keys: list[str] = []
    for line in readme.splitlines():
        if not line.startswith("| `["):
            continue
        names = re.findall(r"`([^`]+)`", line.split("|")[1])  # "[retry] delay", "backoff", "max_delay"
        section, first = re.fullmatch(r"(\[\[?[^\]]+\]\]?) (.+)", names[0]).groups()  # [[schedule]] too
        keys += [f"{section} {name}" for name in (first, *names[1:])]
    assert len(keys) >= 30, keys
    promises = " ".join(m.promise for m in MUTATIONS)
    missing = [k for k in keys if k not in promises]
    assert missing == [], f"config keys no mutation switches off: {missing}"
    for variable in ("LOG_LEVEL", "IPCPOOL_ROOT"):
        assert variable in promises
    for number in range(1, 7):
        assert f"guarantee {number}" in promises, f"README guarantee {number} has no mutation"
