"""The transport seam's entry: the factories that pick a backend from ``[transport] backend``.

The seam itself, its verbs on one page, is :mod:`ipcpool.transport.base`. Backends are imported
lazily, here only: nothing above the seam names one (``tests/test_seam.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipcpool.transport.base import (
    Answer,
    DeadLetters,
    Inspector,
    MessageGone,
    Outbox,
    Raw,
    Receipt,
    Source,
    Store,
    Taken,
    TransportDown,
)

if TYPE_CHECKING:
    from ipcpool.config import Config

__all__ = ["Answer", "DeadLetters", "Inspector", "MessageGone", "Outbox", "Raw", "Receipt", "Source", "Store", "Taken",
           "TransportDown", "make_inspector", "make_outbox", "make_source", "make_store", "preflight", "spool_outbox"]


def make_source(config: Config, *, clock: Any, on_hint: Any) -> Source:
    """The supervisor's side of the configured backend."""
    if config.transport.backend == "redis":
        from ipcpool.transport.bridge import Bridge
        from ipcpool.transport.redis.source import RedisSource

        return RedisSource(config, clock=clock, bridge=Bridge(config, clock=clock, on_hint=on_hint))
    from ipcpool.transport.spool.source import SpoolSource

    return SpoolSource(config, clock=clock, on_hint=on_hint)


def make_store(config: Config) -> Store:
    """A worker's side of the configured backend (built in the worker process)."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.store import RedisStore

        return RedisStore(config)
    from ipcpool.transport.spool.store import SpoolStore

    return SpoolStore(config)


def make_outbox(config: Config) -> Outbox:
    """A sender's side of the configured backend."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.outbox import RedisOutbox

        return RedisOutbox(config)
    spool = config.spool
    return spool_outbox(spool.root, durability=spool.durability, mode=spool.mode, max_queued=spool.max_queued)


def spool_outbox(root: Any, **options: Any) -> Outbox:
    """A sender into the spool root ``root`` (``Client(root, ...)``)."""
    from ipcpool.transport.spool.outbox import SpoolOutbox

    return SpoolOutbox(root, **options)


def make_inspector(config: Config) -> Inspector:
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.inspector import RedisInspector

        return RedisInspector(config)
    from ipcpool.transport.spool.inspector import SpoolInspector

    return SpoolInspector(config)


def preflight(config: Config) -> None:
    """What ``ipcpool run`` checks before it starts (unsafe folders; a Redis that would lose messages):
    raises SpoolError or ConfigError with the reason and the fix."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.checks import check_server

        check_server(config)
        return
    from ipcpool.transport.spool.preflight import check_spool_permissions

    check_spool_permissions(config)
