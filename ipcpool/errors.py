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
# Between a worker and its supervisor only:
EXIT_WORKER_GRACE = 4  # a worker told to stop by SIGTERM ran out of [pool] shutdown_grace mid-handler
# A worker's handler outlived handler_timeout + kill_grace + WORKER_LIMIT_MARGIN and its supervisor had not
# stopped it (stopped, frozen, paused): the worker ended itself, and the supervisor counts it as a timeout.
EXIT_WORKER_OVERTIME = 5


class IpcpoolError(Exception):
    """Root of every error ipcpool raises."""


class ConfigError(IpcpoolError):
    """The configuration file is missing, unreadable or invalid.

    The message names the file, the key and the problem, e.g.
    ``configs/prod.toml: [pool] workers must be a positive integer, got "four"``.
    """


def shown(raw: object) -> str:
    """A configured value as its TOML would write it, for a ConfigError's message (``"four"``, ``true``)."""
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)


class InvalidMessage(IpcpoolError):
    """A message file cannot be decoded or is not a valid envelope.

    Its text is the reason written to ``errors/``; ``head`` holds the first
    bytes of a file refused before it was read whole (too large), so the
    record can still say what the message claims to be.
    """

    head: bytes = b""


class SpoolError(IpcpoolError):
    """The spool directory is unusable (permissions, ownership, a symlinked group)."""


class UnknownGroup(IpcpoolError):
    """A group that is not in ``[spool] groups``, refused because ``[spool] strict_groups`` is on."""

    def __init__(self, group: str, known: tuple[str, ...]) -> None:
        self.group = group
        self.known = known
        super().__init__(f"group {group!r} is not in [spool] groups ({', '.join(known)}) and [spool] strict_groups "
                         "is on; add it there, or check the name for a typo")


class TransportUnavailable(IpcpoolError, ConnectionError):
    """The transport cannot be reached now (Redis is down or unreachable); worth retrying.

    A ConnectionError, so code that copes with a failing write (OSError) copes with it too.
    """


class AlreadyRunning(IpcpoolError):
    """Another supervisor holds this spool root's lock."""


class HandlerNotFound(IpcpoolError):
    """A ``module:function`` reference in ``[handlers]`` cannot be imported."""


class WorkerBootError(IpcpoolError):
    """The pool did not start: its workers keep dying before they are ready (the compat API's start)."""


class AckTimeout(IpcpoolError):
    """A sent message was not acknowledged after every retry (or no supervisor is running).

    ``hint`` says why, when that is known: no supervisor holds the root, or
    one does and the handler is slower than ``[ack] timeout``.
    """

    def __init__(self, message_id: str, group: str, attempts: int, timeout: float, hint: str = "") -> None:
        self.message_id = message_id
        self.group = group
        self.attempts = attempts
        self.timeout = timeout
        self.hint = hint
        super().__init__(
            f"ACK timeout: message {message_id} to group {group!r} was not acknowledged "
            f"after {attempts} attempt(s) of {timeout:g}s each" + (f"; {hint}" if hint else "")
        )


class ResponseTimeout(IpcpoolError):
    """A request got no response in time."""

    def __init__(self, message_id: str, group: str, timeout: float, hint: str = "") -> None:
        self.message_id = message_id
        self.group = group
        self.timeout = timeout
        self.hint = hint
        super().__init__(
            f"no response to request {message_id} in group {group!r} within {timeout:g}s"
            + (f"; {hint}" if hint else "")
        )


class NoSupervisor(AckTimeout, ResponseTimeout):
    """No supervisor runs for the root: the message stays queued, and is handled when one starts.

    ``send_and_wait`` and ``request`` raise it at once, instead of waiting out ``[ack] timeout`` for an answer
    nobody can give (unless asked to wait for a supervisor). An AckTimeout and a ResponseTimeout, as they
    raised for this before.
    """

    def __init__(self, message_id: str, group: str, root: object) -> None:
        self.message_id = message_id
        self.group = group
        self.attempts = 1
        self.timeout = 0.0
        self.root = root
        self.hint = (f"no ipcpool supervisor is running for {root}; the message stays queued and will be handled "
                     "when one starts")
        Exception.__init__(self, f"message {message_id} to group {group!r} is queued, but {self.hint} (wait for "
                                 "one: --wait-for-supervisor, or wait_for_supervisor=True)")


class MessageExists(IpcpoolError):
    """A different message with this file name is already queued; publishing would replace it."""

    def __init__(self, group: str, name: str) -> None:
        self.group = group
        self.name = name
        super().__init__(
            f"a different message named {name!r} is already queued in group {group!r}; "
            "refusing to replace it (use a new id, or wait until it is handled)"
        )


class MessageNotHandled(IpcpoolError):
    """A sent message ended in ``errors/``; its sender is told at once (a nack), never left waiting.

    ``reason`` is the one in its error record, ``error_file`` where that
    record is (``<group>/errors/<name>``), ``outcome`` one of ``rejected``,
    ``failed``, ``poisoned``.
    """

    def __init__(self, message_id: str, group: str, reason: str, error_file: str = "", outcome: str = "") -> None:
        self.message_id = message_id
        self.group = group
        self.reason = reason
        self.error_file = error_file
        self.outcome = outcome
        where = f" (record: {error_file})" if error_file else ""
        # Exception's own __init__: in MessageFailed the next class in line is HandlerError.
        said = _OUTCOME_WORDS.get(outcome, "was not handled")
        Exception.__init__(self, f"message {message_id} to group {group!r} {said}: {reason}{where}")


_OUTCOME_WORDS = {"rejected": "was rejected", "failed": "failed", "poisoned": "was quarantined as poison",
                  "expired": "expired"}


class MessageRejected(MessageNotHandled):
    """It never reached a handler: no handler for its type, a type the group does not allow,
    an invalid or oversized message, a group mismatch."""


class HandlerError(IpcpoolError):
    """The remote handler failed; carries the error it reported."""

    def __init__(self, message_id: str, error: str, error_type: str = "") -> None:
        self.message_id = message_id
        self.error = error
        self.error_type = error_type
        prefix = f"{error_type}: " if error_type else ""
        super().__init__(f"handler for {message_id} failed: {prefix}{error}")


class MessageFailed(MessageNotHandled, HandlerError):
    """Its handler raised on every attempt, or it killed or hung its worker ``max_deliveries``
    times (poison). Also a :class:`HandlerError`, which ``request`` raised for this before."""

    def __init__(self, message_id: str, group: str, reason: str, error_file: str = "", outcome: str = "",
                 error_type: str = "") -> None:
        MessageNotHandled.__init__(self, message_id, group, reason, error_file, outcome)
        self.error = reason
        self.error_type = error_type


class QueueFull(IpcpoolError):
    """A group's ``messages/`` already holds ``[spool] max_queued`` files."""

    def __init__(self, group: str, limit: int) -> None:
        self.group = group
        self.limit = limit
        super().__init__(
            f"queue full: group {group!r} already holds {limit} queued message(s) "
            "([spool] max_queued); retry later or raise the limit"
        )
