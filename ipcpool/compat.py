"""The original API: ``start_enhanced_ipc``, ``get_ipc_system``, ``IPCMessageType``.

Code written for the TypeScript system ports line by line::

    start_enhanced_ipc(lambda group_folder, data: print("Received:", data))
    ipc = get_ipc_system()
    ipc.register_handler(IPCMessageType.ERROR, on_error)
    ipc.send("main", IPCMessageType.TASK, {"taskId": 123}, True)

Handlers registered here are Python callables, so the supervisor runs in a
child process forked from this one, and its workers are forked from it in
turn, inheriting them. (``ipcpool run`` instead imports handlers named in
config, in workers started from a clean forkserver.) The module holds the one
piece of global state ipcpool allows: the singleton :func:`get_ipc_system`
returns.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any

from ipcpool.client import Client
from ipcpool.config import Config, load_config, parse_config
from ipcpool.errors import AckTimeout
from ipcpool.logs import setup_logging
from ipcpool.message import IPCMessageType, Message, new_id

log = logging.getLogger(__name__)

LegacyCallback = Callable[[str, Any], Any]
CONFIG_ENV = "IPCPOOL_CONFIG"


def _run_supervisor(config: Config, handlers: dict[str, Callable[[Message], Any]]) -> None:
    from ipcpool.supervisor import Supervisor

    setup_logging()
    raise SystemExit(Supervisor(config, handlers=handlers).run())


class IPCSystem:
    """The original system's object: register handlers, send, start, stop."""

    def __init__(self, config: Config | None = None, group: str = "main") -> None:
        if config is None:
            path = os.environ.get(CONFIG_ENV)
            config = load_config(path) if path else parse_config({})
        self.config = config
        self.group = group
        self._handlers: dict[str, Callable[[Message], Any]] = {}
        self._callback: LegacyCallback | None = None
        self._process: Any = None
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.from_config(self.config, self.group, on_give_up=self._on_give_up)
        return self._client

    def register_handler(self, message_type: str | IPCMessageType, handler: Callable[[Message], Any]) -> None:
        """Handle messages of one type; takes effect at the next start()."""
        self._handlers[str(message_type)] = handler
        log.info("IPC handler registered type=%s", message_type)

    def set_callback(self, callback: LegacyCallback) -> None:
        """The old polling API's interface: callback(group_folder, data) for task, command and legacy files."""
        self._callback = callback

    def _worker_handlers(self) -> dict[str, Callable[[Message], Any]]:
        table: dict[str, Callable[[Message], Any]] = {}
        callback = self._callback
        if callback is not None:
            def route(message: Message) -> Any:
                return callback(message.group, message.payload)

            for message_type in ("task", "command", "legacy"):
                table[message_type] = route
        table.update(self._handlers)
        table.pop(IPCMessageType.ERROR.value, None)  # the error handler is the sender's hook
        return table

    def start(self) -> None:
        """Start the supervisor and its workers in a child process."""
        if self._process is not None and self._process.is_alive():
            return
        ctx = multiprocessing.get_context("fork")
        self._process = ctx.Process(target=_run_supervisor, args=(self.config, self._worker_handlers()),
                                    name="ipcpool-supervisor", daemon=False)
        self._process.start()

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop the supervisor (SIGTERM, then wait)."""
        if self._process is not None:
            self._process.terminate()
            self._process.join(timeout if timeout is not None else self.config.pool.shutdown_grace + 5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def send(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
             requires_ack: bool = False, *, wait: bool = False) -> str:
        """Publish; with requires_ack, the ack is awaited with retries in the background
        (or here, with ``wait=True``), and the ERROR handler hears when retries run out."""
        if not requires_ack:
            return self.client.send(group, type, payload)
        if wait:
            return self.client.send_and_wait(group, type, payload)
        message_id = new_id()
        waiter = Client.from_config(self.config, self.group, on_give_up=self._on_give_up)
        thread = threading.Thread(target=_wait_quietly, args=(waiter, group, type, payload, message_id),
                                  name=f"ack-{message_id}", daemon=True)
        thread.start()
        return message_id

    def _on_give_up(self, message: Message) -> None:
        handler = self._handlers.get(IPCMessageType.ERROR.value)
        if handler is not None:
            handler(message)


def _wait_quietly(client: Client, group: str, type_: Any, payload: Any, message_id: str) -> None:
    try:
        client.send_and_wait(group, type_, payload, message_id=message_id)
    except AckTimeout:
        pass  # logged, and reported to the ERROR handler
    finally:
        client.close()


_SYSTEM: IPCSystem | None = None
_SYSTEM_LOCK = threading.Lock()


def get_ipc_system() -> IPCSystem:
    """The process-wide IPCSystem (created on first use)."""
    global _SYSTEM  # the compat singleton: the one global ipcpool keeps
    with _SYSTEM_LOCK:
        if _SYSTEM is None:
            _SYSTEM = IPCSystem()
        return _SYSTEM


def start_enhanced_ipc(callback: LegacyCallback | None = None) -> IPCSystem:
    """Start the system with the old callback interface; returns the singleton."""
    system = get_ipc_system()
    if callback is not None:
        system.set_callback(callback)
    system.start()
    log.info("Enhanced IPC system starting (compat API) root=%s", system.config.spool.root)
    return system
