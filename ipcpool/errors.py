"""The error tree and the process exit codes.

Every error ipcpool raises derives from :class:`IpcpoolError`, so a caller can
catch ours without catching everything. Exit codes are a protocol between
``ipcpool run`` and whatever starts it (systemd, a container runtime, a test):
they are named here once and used everywhere else by name.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a command did not succeed (ack timeout, unhealthy, queue full, already running)
EXIT_CONFIG = 2  # bad configuration or command line: fix the input, do not retry
EXIT_WORKER_BOOT = 3  # workers cannot start (a handler module fails to import): do not respawn


class IpcpoolError(Exception):
    """Root of every error ipcpool raises."""


class ConfigError(IpcpoolError):
    """The configuration file is missing, unreadable or invalid.

    The message names the file, the key and the problem, e.g.
    ``configs/prod.toml: [pool] workers must be a positive integer, got "four"``.
    """


class InvalidMessage(IpcpoolError):
    """A message file cannot be decoded or is not a valid envelope.

    Its text is the reason written to ``errors/``.
    """


class SpoolError(IpcpoolError):
    """The spool directory is unusable (permissions, ownership, a symlinked group)."""


class AlreadyRunning(IpcpoolError):
    """Another supervisor holds this spool root's lock."""


class HandlerNotFound(IpcpoolError):
    """A ``module:function`` reference in ``[handlers]`` cannot be imported."""


class WorkerBootError(IpcpoolError):
    """Workers keep dying before they are ready; the supervisor halts."""


class AckTimeout(IpcpoolError):
    """A sent message was not acknowledged after every retry."""

    def __init__(self, message_id: str, group: str, attempts: int, timeout: float) -> None:
        self.message_id = message_id
        self.group = group
        self.attempts = attempts
        self.timeout = timeout
        super().__init__(
            f"ACK timeout: message {message_id} to group {group!r} was not acknowledged "
            f"after {attempts} attempt(s) of {timeout:g}s each; is `ipcpool run` up for this root?"
        )


class ResponseTimeout(IpcpoolError):
    """A request got no response in time."""

    def __init__(self, message_id: str, group: str, timeout: float) -> None:
        self.message_id = message_id
        self.group = group
        self.timeout = timeout
        super().__init__(
            f"no response to request {message_id} in group {group!r} within {timeout:g}s"
        )


class HandlerError(IpcpoolError):
    """The remote handler failed; carries the error it reported."""

    def __init__(self, message_id: str, error: str, error_type: str = "") -> None:
        self.message_id = message_id
        self.error = error
        self.error_type = error_type
        prefix = f"{error_type}: " if error_type else ""
        super().__init__(f"handler for {message_id} failed: {prefix}{error}")


class QueueFull(IpcpoolError):
    """A group's ``messages/`` already holds ``[spool] max_queued`` files."""

    def __init__(self, group: str, limit: int) -> None:
        self.group = group
        self.limit = limit
        super().__init__(
            f"queue full: group {group!r} already holds {limit} queued message(s) "
            "([spool] max_queued); retry later or raise the limit"
        )
