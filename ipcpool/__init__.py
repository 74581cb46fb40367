"""ipcpool: a supervised worker pool for file-based inter-process messaging.

Processes drop message files into ``<root>/<group>/messages/``; ``ipcpool run``
hands each to a worker process running the handler named in config, acks,
replies or quarantines it, and never loses one; on Redis Streams, many
supervisors share each group's queue. docs/spool-format.md has the on-disk
contract, docs/design.md the architecture and the invariants.
"""

from ipcpool.client import AsyncClient, Client
from ipcpool.compat import IPCSystem, get_ipc_system, start_enhanced_ipc
from ipcpool.config import Config, load_config
from ipcpool.errors import (
    AckTimeout,
    AlreadyRunning,
    ConfigError,
    HandlerError,
    HandlerNotFound,
    InvalidMessage,
    IpcpoolError,
    MessageExists,
    MessageFailed,
    MessageNotHandled,
    MessageRejected,
    NoSupervisor,
    QueueFull,
    ResponseTimeout,
    SpoolError,
    TransportUnavailable,
    WorkerBootError,
)
from ipcpool.message import IPCMessageType, Message
from ipcpool.msgtime import BadWindow

__version__ = "0.1.0"

__all__ = [
    "AckTimeout",
    "AlreadyRunning",
    "AsyncClient",
    "BadWindow",
    "Client",
    "Config",
    "ConfigError",
    "HandlerError",
    "HandlerNotFound",
    "IPCMessageType",
    "IPCSystem",
    "InvalidMessage",
    "IpcpoolError",
    "Message",
    "MessageExists",
    "MessageFailed",
    "MessageNotHandled",
    "MessageRejected",
    "NoSupervisor",
    "QueueFull",
    "ResponseTimeout",
    "SpoolError",
    "TransportUnavailable",
    "WorkerBootError",
    "get_ipc_system",
    "load_config",
    "start_enhanced_ipc",
]
