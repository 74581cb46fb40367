"""The original API: ``start_enhanced_ipc``, ``get_ipc_system``, ``IPCMessageType``.

Code written for the TypeScript system ports line by line::

    start_enhanced_ipc(lambda group_folder, data: print("Received:", data))
    ipc = get_ipc_system()
    ipc.register_handler(IPCMessageType.ERROR, on_error)
    ipc.send("main", IPCMessageType.TASK, {"taskId": 123}, True)
    ipc.stop()

Handlers registered here are Python callables, so the supervisor runs in a
child process forked from this one, and its workers are forked from it in
turn, inheriting them. (``ipcpool run`` instead imports handlers named in
config, in workers started from a clean forkserver.) The root's lock is taken
here, before the fork, so a second system on one root raises AlreadyRunning
in the caller, and ``start`` returns once every worker is ready. ``send`` has
published when it returns; with ``requires_ack``
the ack is awaited (and retried) by one background thread for every send.
``stop`` lets the pool handle what is queued, up to ``[pool] shutdown_grace``,
then drains it. The module holds the one piece of global state ipcpool
allows: the singleton :func:`get_ipc_system` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from ipcpool.client import AsyncClient, Client, Prepared
from ipcpool.config import Config, load_config, parse_config
from ipcpool.errors import IpcpoolError, WorkerBootError
from ipcpool.localroot import LocalRoot
from ipcpool.message import IPCMessageType, Message
from ipcpool.ops.logs import setup_logging
from ipcpool.transport import make_inspector

log = logging.getLogger(__name__)

LegacyCallback = Callable[[str, Any], Any]
CONFIG_ENV = "IPCPOOL_CONFIG"
IDLE_POLL = 0.02  # seconds between looks at the spool while stop() lets the pool finish
START_TIMEOUT = 60.0  # seconds start() waits for every worker to be ready


def _run_supervisor(config: Config, handlers: dict[str, Callable[[Message], Any]], lock_fd: int,
                    started_fd: int) -> None:
    from ipcpool.pool.supervisor import Supervisor

    def started() -> None:
        os.write(started_fd, b"1")
        os.close(started_fd)

    setup_logging()
    raise SystemExit(Supervisor(config, handlers=handlers, lock_fd=lock_fd, on_started=started).run())


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
        self._acks: _AckWaits | None = None

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
        """Start the supervisor and its workers in a child process; returns once they are ready.

        Raises AlreadyRunning here, in the caller, when another supervisor
        owns the root: the lock is taken before the fork and handed over.
        """
        if self._process is not None and self._process.is_alive():
            return
        _ensure_logging()
        local = LocalRoot(self.config.spool.root)
        local.ensure(0o700 if self.config.spool.mode == "private" else 0o2750)
        lock_fd = local.acquire_lock()
        started_r, started_w = os.pipe()
        try:
            ctx = multiprocessing.get_context("fork")
            self._process = ctx.Process(target=_run_supervisor, name="ipcpool-supervisor", daemon=False,
                                        args=(self.config, self._worker_handlers(), lock_fd, started_w))
            self._process.start()
        finally:
            os.close(lock_fd)  # the child holds the lock now (a flock belongs to the open file, shared by fork)
            os.close(started_w)
        try:
            ready, _, _ = select.select([started_r], [], [], START_TIMEOUT)
            if not ready or not os.read(started_r, 1):  # nothing, or EOF: the child ended before it started
                self._process.kill()
                self._process.join()
                code, self._process = self._process.exitcode, None
                raise WorkerBootError(f"the ipcpool supervisor did not start within {START_TIMEOUT:g}s "
                                      f"(exit code {code}); see its log above")
        finally:
            os.close(started_r)

    def stop(self, timeout: float | None = None) -> None:
        """Let the pool handle what is queued, up to ``timeout`` (default ``[pool] shutdown_grace``), then
        drain and stop it: what is still queued stays for the next start."""
        grace = self.config.pool.shutdown_grace if timeout is None else timeout
        deadline = time.monotonic() + grace
        if self._process is not None:
            self._wait_idle(deadline)
            self._process.terminate()
            self._process.join(max(0.0, deadline - time.monotonic()) + self.config.pool.shutdown_grace + 5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None
        if self._acks is not None:
            self._acks.close(max(0.0, deadline - time.monotonic()))
            self._acks = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _wait_idle(self, deadline: float) -> None:
        """Until no group has a message queued or in flight, or the deadline, or the supervisor is gone."""
        inspector = make_inspector(self.config)
        try:
            while time.monotonic() < deadline and self._process.is_alive():
                if not inspector.busy():
                    return
                time.sleep(IDLE_POLL)
        finally:
            inspector.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def send(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
             requires_ack: bool = False, *, wait: bool = False) -> str:
        """Publish (it is in messages/ when this returns). With requires_ack, the ack is awaited with
        retries in the background (or here, with ``wait=True``), and the ERROR handler hears when the
        message is refused or retries run out."""
        client = self.client
        if requires_ack and wait:
            return client.send_and_wait(group, type, payload)
        message = client.prepare(group, type, payload, requires_ack=requires_ack)
        client.publish(message)
        log.info("IPC message sent id=%s group=%s type=%s", message.message_id, group, type)
        if requires_ack:
            if self._acks is None:
                self._acks = _AckWaits(client)
            self._acks.wait(message)
        return message.message_id

    def _on_give_up(self, message: Message) -> None:
        handler = self._handlers.get(IPCMessageType.ERROR.value)
        if handler is not None:
            handler(message)


class _AckWaits:
    """One thread with one event loop awaiting the acks of every message ``send`` published.

    However many sends wait, that is one thread and one inotify descriptor.
    """

    def __init__(self, client: Client) -> None:
        self._client = AsyncClient(client)
        self._loop = asyncio.new_event_loop()
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ipcpool-acks", daemon=True)
        self._thread.start()

    def wait(self, message: Prepared) -> None:
        future = asyncio.run_coroutine_threadsafe(self._wait(message), self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _wait(self, message: Prepared) -> None:
        try:
            await self._client.wait_acked(message, published=True)
        except IpcpoolError:
            pass  # logged, and reported to the ERROR handler

    def close(self, timeout: float) -> None:
        """Let waits whose answer is there finish (up to ``timeout``), then end the thread."""
        concurrent.futures.wait(list(self._pending), timeout)
        try:
            asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    """Cancel every other task of this loop and let each finish its cancellation."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _ensure_logging() -> None:
    """The original's log lines appear even when the program configured no logging."""
    if not logging.getLogger().hasHandlers():
        setup_logging()


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
    _ensure_logging()
    system = get_ipc_system()
    if callback is not None:
        system.set_callback(callback)
    system.start()
    log.info("Enhanced IPC system starting (compat API) root=%s", system.config.spool.root)
    return system
