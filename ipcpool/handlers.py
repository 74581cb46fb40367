"""Handler functions: resolved from ``[handlers]`` and run, sync or async.

Handlers are named in config, never in messages: a message chooses one only
through its ``type``, looked up in the config's table. Only workers (and
``ipcpool check``) import handler code; the supervisor never does.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ipcpool.errors import HandlerNotFound
from ipcpool.message import Message

Handler = Callable[[Message], Any]


def ensure_cwd_on_path() -> None:
    """Handler modules import relative to the working directory, as `python -m` would."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve(ref: str) -> Handler:
    """Import ``"package.module:function"``; HandlerNotFound says which part failed."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerNotFound(f"cannot import handler module {module_name!r} (from {ref!r}): {exc!r}") from exc
    try:
        func = getattr(module, attr)
    except AttributeError as exc:
        raise HandlerNotFound(f"module {module_name!r} has no function {attr!r} (from {ref!r})") from exc
    if not callable(func):
        raise HandlerNotFound(f"{ref!r} is not callable")
    return func


def resolve_all(table: Mapping[str, str]) -> dict[str, Handler]:
    """Import every handler in the table (each module once)."""
    ensure_cwd_on_path()
    return {message_type: resolve(ref) for message_type, ref in table.items()}


class HandlerTable:
    """Type -> handler, with the ``legacy`` and ``"*"`` entries applied."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        self._fallback = self._handlers.get("*")
        self._loop: asyncio.AbstractEventLoop | None = None

    def lookup(self, message: Message) -> Handler | None:
        """The handler for the message's type; a legacy body without a handler of its type goes to
        ``legacy``; anything else without one to ``"*"``."""
        handler = self._handlers.get(message.type)
        if handler is None and message.legacy:
            handler = self._handlers.get("legacy")
        return handler if handler is not None else self._fallback

    def has(self, message_type: str) -> bool:
        return message_type in self._handlers

    def call(self, handler: Handler, message: Message) -> Any:
        """Run a handler once; an ``async def`` runs to completion on a private loop."""
        result = handler(message)
        if result is not None and inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(_awaited(result))
        return result

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
