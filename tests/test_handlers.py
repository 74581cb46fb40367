"""ipcpool.handlers: resolving "module:function" refs and running sync and async handlers."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipcpool.errors import HandlerNotFound
from ipcpool.handlers import HandlerTable, resolve, resolve_all
from ipcpool.message import Message, to_message

HANDLER_SOURCE = '''
import asyncio

CALLS = []
NOT_CALLABLE = 42


def handle_task(message):
    CALLS.append(("task", message.id))
    return {"ok": message.payload}


def handle_any(message):
    return "any:" + message.type


async def handle_async(message):
    await asyncio.sleep(0)
    return {"async": message.payload}


async def handle_async_failure(message):
    await asyncio.sleep(0)
    raise RuntimeError("async handler failed: " + str(message.payload))
'''


@pytest.fixture
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, uniquely named handler module on sys.path (a package too, for dotted refs)."""
    name = f"ipcpool_test_handlers_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(HANDLER_SOURCE)
    package = tmp_path / f"{name}_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("def fn(message):\n    return 'dotted'\n")
    (tmp_path / f"{name}_broken.py").write_text("raise RuntimeError('boom at import time')\n")
    (tmp_path / f"{name}_syntax.py").write_text("def oops(:\n")
    (tmp_path / f"{name}_missing_dep.py").write_text(f"import {name}_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def _message(type_: str = "task", payload: object = 1, *, legacy: bool = False) -> Message:
    if legacy:
        return to_message({"not": "an envelope"}, group="main", stem="legacy-1")
    return to_message({"id": "m-1", "type": type_, "payload": payload}, group="main", stem="x")


# -- resolve ---------------------------------------------------------------------------------


def test_resolve_module_function(handler_module):
    func = resolve(f"{handler_module}:handle_task")
    assert callable(func)
    assert func(_message(payload=7)) == {"ok": 7}
    assert sys.modules[handler_module].CALLS == [("task", "m-1")]


def test_resolve_dotted_module(handler_module):
    func = resolve(f"{handler_module}_pkg.sub.mod:fn")
    assert func(_message()) == "dotted"


def test_resolve_imports_each_module_once(handler_module):
    first = resolve(f"{handler_module}:handle_task")
    second = resolve(f"{handler_module}:handle_task")
    assert first is second


def test_missing_module_raises_handler_not_found_naming_it(handler_module):
    missing = f"{handler_module}_nope"
    with pytest.raises(HandlerNotFound) as info:
        resolve(f"{missing}:handle_task")
    assert repr(missing) in str(info.value)
    assert "cannot import" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize(
    ("suffix", "cause", "detail"),
    [("_broken", RuntimeError, "boom at import time"), ("_syntax", SyntaxError, "SyntaxError"),
     ("_missing_dep", ImportError, "does_not_exist")],
)
def test_module_failing_at_import_raises_handler_not_found(handler_module, suffix, cause, detail):
    module = handler_module + suffix
    with pytest.raises(HandlerNotFound) as info:
        resolve(f"{module}:anything")
    assert repr(module) in str(info.value)
    assert detail in str(info.value)
    assert isinstance(info.value.__cause__, cause)


def test_missing_attribute_raises_handler_not_found(handler_module):
    with pytest.raises(HandlerNotFound) as info:
        resolve(f"{handler_module}:no_such_function")
    assert "no_such_function" in str(info.value)
    assert repr(handler_module) in str(info.value)
    assert "has no function" in str(info.value)


def test_non_callable_attribute_raises_handler_not_found(handler_module):
    with pytest.raises(HandlerNotFound, match="not callable"):
        resolve(f"{handler_module}:NOT_CALLABLE")


def test_resolve_all(handler_module):
    table = resolve_all({"task": f"{handler_module}:handle_task", "*": f"{handler_module}:handle_any"})
    assert set(table) == {"task", "*"}
    assert table["*"](_message("other")) == "any:other"


def test_resolve_all_stops_at_the_first_bad_ref(handler_module):
    with pytest.raises(HandlerNotFound):
        resolve_all({"task": f"{handler_module}:handle_task", "bad": f"{handler_module}:nope"})


def test_handler_not_found_is_an_ipcpool_error():
    from ipcpool.errors import IpcpoolError

    assert issubclass(HandlerNotFound, IpcpoolError)


# -- HandlerTable ----------------------------------------------------------------------------------------


def _h(label: str):
    def handler(message: Message) -> str:
        return label

    handler.__name__ = f"handler_{label.replace('*', 'star')}"
    return handler


def test_lookup_by_type():
    task, command = _h("task"), _h("command")
    table = HandlerTable({"task": task, "command": command})
    assert table.lookup(_message("task")) is task
    assert table.lookup(_message("command")) is command
    assert table.lookup(_message("other")) is None
    assert table.has("task")
    assert not table.has("other")


def test_lookup_falls_back_to_star():
    task, star = _h("task"), _h("*")
    table = HandlerTable({"task": task, "*": star})
    assert table.lookup(_message("task")) is task
    assert table.lookup(_message("unknown")) is star


def test_legacy_messages_use_the_legacy_handler():
    legacy, star, task = _h("legacy"), _h("*"), _h("task")
    table = HandlerTable({"legacy": legacy, "*": star, "task": task})
    assert table.lookup(_message(legacy=True)) is legacy


def test_legacy_messages_fall_back_to_star():
    star = _h("*")
    table = HandlerTable({"*": star})
    assert table.lookup(_message(legacy=True)) is star


def test_legacy_messages_without_legacy_or_star_have_no_handler():
    table = HandlerTable({"task": _h("task")})
    assert table.lookup(_message(legacy=True)) is None


def test_call_sync_handler():
    table = HandlerTable({})
    assert table.call(lambda m: m.payload * 2, _message(payload=21)) == 42


def test_call_sync_handler_exception_propagates():
    def bad(message: Message) -> None:
        raise ValueError("sync failure")

    with pytest.raises(ValueError, match="sync failure"):
        HandlerTable({}).call(bad, _message())


def test_call_async_handler_runs_to_completion(handler_module):
    handle_async = resolve(f"{handler_module}:handle_async")
    table = HandlerTable({"task": handle_async})
    try:
        message = _message(payload={"n": 1})
        assert table.call(table.lookup(message), message) == {"async": {"n": 1}}
        # the private loop is reused across calls
        assert table.call(handle_async, _message(payload=2)) == {"async": 2}
    finally:
        table.close()
    table.close()  # idempotent


def test_call_async_handler_exception_propagates(handler_module):
    table = HandlerTable({})
    try:
        with pytest.raises(RuntimeError, match="async handler failed: 5"):
            table.call(resolve(f"{handler_module}:handle_async_failure"), _message(payload=5))
        # still usable after a failure
        assert table.call(resolve(f"{handler_module}:handle_async"), _message(payload=6)) == {"async": 6}
    finally:
        table.close()


def test_call_async_handler_after_close_gets_a_new_loop(handler_module):
    handle_async = resolve(f"{handler_module}:handle_async")
    table = HandlerTable({})
    assert table.call(handle_async, _message(payload=1)) == {"async": 1}
    table.close()
    assert table.call(handle_async, _message(payload=2)) == {"async": 2}
    table.close()


def test_handler_modules_can_live_in_a_written_file(tmp_path, monkeypatch):
    name = f"ipcpool_test_inline_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        def handle(message):
            return message.group
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert resolve(f"{name}:handle")(_message()) == "main"
    finally:
        sys.modules.pop(name, None)
