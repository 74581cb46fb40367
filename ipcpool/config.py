"""TOML configuration to frozen, validated objects.

Every section is a frozen dataclass whose fields are the allowed keys, with
their defaults. Loading rejects unknown keys and wrong types with one message
that names the file, the key and the problem, so ``ipcpool run`` can stop
before it starts (exit code 2) instead of failing later in a worker.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from ipcpool.errors import ConfigError, shown
from ipcpool.message import FORMATS, GROUP_NAME, MAX_ORDERING_KEY, TYPE_NAME
from ipcpool.ordering import ORDERINGS
from ipcpool.schedule import ScheduleSpec, check_schedules, parse_schedules

ROOT_ENV = "IPCPOOL_ROOT"
HANDLER_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
SPECIAL_HANDLER_KEYS = ("legacy", "*")
DURABILITY_MODES = ("process", "power")
SPOOL_MODES = ("private", "shared")
WATCHERS = ("native", "polling")
MAX_PREFETCH = 256
# How much longer than the supervisor's own kill (handler_timeout, SIGKILL after kill_grace) a worker lets a
# handler attempt run before it ends itself (ipcpool.pool.worker): room for a live supervisor to come first.
WORKER_LIMIT_MARGIN = 1.0


@dataclass(frozen=True)
class SpoolConfig:
    root: str = "data/ipc"
    groups: tuple[str, ...] = ("main",)
    format: str = "json"
    durability: str = "process"
    mode: str = "private"
    watcher: str = "native"
    settle_time: float = 2.0
    rescan_interval: float = 5.0
    max_message_bytes: int = 1024 * 1024
    max_queued: int = 0
    tmp_max_age: float = 3600.0
    response_retention: float = 3600.0
    retried_retention: float = 7 * 86400.0
    strict_groups: bool = False
    inboxes: tuple[str, ...] = ("messages",)


@dataclass(frozen=True)
class PoolConfig:
    workers: int = 2
    prefetch: int = 32
    handler_timeout: float = 60.0
    max_deliveries: int = 3
    max_tasks_per_worker: int = 0
    max_memory_mb: int = 0
    shutdown_grace: float = 30.0
    kill_grace: float = 3.0
    max_boot_failures: int = 3


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 5.0


@dataclass(frozen=True)
class HeartbeatConfig:
    interval: float = 2.0
    miss_limit: int = 3


@dataclass(frozen=True)
class AckConfig:
    timeout: float = 30.0
    max_retries: int = 3
    retry_delay: float = 5.0
    backoff: float = 1.0
    jitter: float = 0.0
    retention: float = 86400.0


@dataclass(frozen=True)
class TransportConfig:
    backend: str = "spool"  # "spool" (files under [spool] root) or "redis" (Redis Streams, many hosts)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"  # IPCPOOL_REDIS_URL overrides; user:password@ and rediss:// work
    prefix: str = "ipcpool"  # every key starts with it: two deployments on one Redis keep apart
    lease: float = 30.0  # seconds a dead supervisor's messages stay its own before others reclaim them
    ca_file: str = ""  # TLS (rediss://): the CA bundle to verify the server with
    outage_timeout: float = 60.0  # seconds senders keep retrying while Redis is unreachable
    dead_letter_retention: float = 7 * 86400.0  # seconds a dead letter is kept in its group's dead-letter stream


@dataclass(frozen=True)
class LogConfig:
    messages: bool = True  # one INFO line per finished message (id, group, type, outcome, duration)
    format: str = "text"  # "text" (one readable line an event) or "json" (one JSON object a line, for shippers)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = ""  # "127.0.0.1:9464": /metrics, /healthz, /readyz served by the supervisor ("" = off)
    loop_timeout: float = 5.0  # seconds the supervisor loop may take to answer a probe before /healthz fails


@dataclass(frozen=True)
class GroupConfig:
    allowed_types: tuple[str, ...] = ()
    ordering: str = "none"  # "fifo": the whole group is one sequence (ipcpool.ordering)
    ordering_field: str = ""  # a payload field whose value is the sequence key of a message without one


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``path`` is the file it came from (None for defaults)."""

    spool: SpoolConfig = field(default_factory=SpoolConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    ack: AckConfig = field(default_factory=AckConfig)
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    handlers: dict[str, str] = field(default_factory=dict)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()  # [[schedule]] tables (ipcpool.schedule)
    path: str | None = None


_SECTIONS: dict[str, type] = {
    "spool": SpoolConfig,
    "pool": PoolConfig,
    "retry": RetryConfig,
    "heartbeat": HeartbeatConfig,
    "ack": AckConfig,
    "log": LogConfig,
    "http": HttpConfig,
    "transport": TransportConfig,
    "redis": RedisConfig,
}
BACKENDS = ("spool", "redis")
REDIS_URL_ENV = "IPCPOOL_REDIS_URL"
REDIS_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
INBOXES = ("messages", "tasks")  # the folders of a group that writers may drop messages into


class _Checker:
    """Builds one section, remembering the file name for every message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where} {problem}")

    def section(self, name: str, cls: type, table: Any) -> Any:
        if not isinstance(table, dict):
            raise self.fail(f"[{name}]", f"must be a table, got {shown(table)}")
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.fail(f"[{name}]", f"has unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(known))}")
        values = {key: self.value(f"[{name}] {key}", hints[key], raw) for key, raw in table.items()}
        return cls(**values)

    def value(self, where: str, hint: Any, raw: Any) -> Any:
        if hint is bool:
            if not isinstance(raw, bool):
                raise self.fail(where, f"must be true or false, got {shown(raw)}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise self.fail(where, f"must be an integer, got {shown(raw)}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise self.fail(where, f"must be a number, got {shown(raw)}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise self.fail(where, f"must be a string, got {shown(raw)}")
            return raw
        if hint == tuple[str, ...]:
            if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
                raise self.fail(where, f"must be a list of strings, got {shown(raw)}")
            return tuple(raw)
        raise AssertionError(f"no checker for {hint}")  # pragma: no cover - schema bug


def _check_spool(c: _Checker, spool: SpoolConfig) -> None:
    if not spool.root:
        raise c.fail("[spool] root", "must not be empty")
    for group in spool.groups:
        if not GROUP_NAME.match(group):
            raise c.fail("[spool] groups", f"has invalid group name {group!r}: use letters, digits, '_' or '-'")
    _one_of(c, "[spool] format", spool.format, FORMATS)
    _one_of(c, "[spool] durability", spool.durability, DURABILITY_MODES)
    _one_of(c, "[spool] mode", spool.mode, SPOOL_MODES)
    _one_of(c, "[spool] watcher", spool.watcher, WATCHERS)
    _positive(c, "[spool] settle_time", spool.settle_time, allow_zero=True)
    _positive(c, "[spool] rescan_interval", spool.rescan_interval)
    _positive(c, "[spool] max_message_bytes", spool.max_message_bytes)
    _positive(c, "[spool] max_queued", spool.max_queued, allow_zero=True)
    _positive(c, "[spool] tmp_max_age", spool.tmp_max_age)
    _positive(c, "[spool] response_retention", spool.response_retention)
    _positive(c, "[spool] retried_retention", spool.retried_retention)
    if "messages" not in spool.inboxes:
        raise c.fail("[spool] inboxes", f'must include "messages", got {list(spool.inboxes)}')
    for inbox in spool.inboxes:
        _one_of(c, "[spool] inboxes", inbox, INBOXES)
    if len(set(spool.inboxes)) != len(spool.inboxes):
        raise c.fail("[spool] inboxes", f"names an inbox twice: {list(spool.inboxes)}")


def _check_transport(c: _Checker, config: Config) -> None:
    _one_of(c, "[transport] backend", config.transport.backend, BACKENDS)
    redis = config.redis
    if not redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise c.fail("[redis] url", f'must start with redis://, rediss:// or unix://, got "{redact_url(redis.url)}"')
    if not REDIS_PREFIX.match(redis.prefix):
        raise c.fail("[redis] prefix", f"must be 1-64 letters, digits, '_', '.' or '-', got {shown(redis.prefix)}")
    _positive(c, "[redis] lease", redis.lease)
    if redis.lease < 3 * config.heartbeat.interval:
        floor = 3 * config.heartbeat.interval
        raise c.fail("[redis] lease", f"must be at least 3 x [heartbeat] interval ({floor:g}s): leases are renewed "
                                      f"from the heartbeat, got {redis.lease:g}s")
    _positive(c, "[redis] outage_timeout", redis.outage_timeout, allow_zero=True)
    _positive(c, "[redis] dead_letter_retention", redis.dead_letter_retention)
    if redis.ca_file and not os.path.isfile(redis.ca_file):
        raise c.fail("[redis] ca_file", f"is not a readable file: {redis.ca_file}")


LOG_FORMATS = ("text", "json")


def _check_http(c: _Checker, config: Config) -> None:
    _one_of(c, "[log] format", config.log.format, LOG_FORMATS)
    _positive(c, "[http] loop_timeout", config.http.loop_timeout)
    if config.http.listen:
        try:
            parse_listen(config.http.listen)
        except ValueError as exc:
            raise c.fail("[http] listen", str(exc)) from None


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) to a bind address; ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'must be "host:port", e.g. "127.0.0.1:9464", got "{text}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'the port must be a number from 0 to 65535, got "{text}"')
    return host, int(port)


def redact_url(url: str) -> str:
    """A Redis URL as it may be logged: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0] if ":" in credentials else ""
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


def _check_numbers(c: _Checker, config: Config) -> None:
    pool, retry, hb, ack = config.pool, config.retry, config.heartbeat, config.ack
    _positive(c, "[pool] workers", pool.workers, kind="a positive integer")
    _positive(c, "[pool] prefetch", pool.prefetch, kind="a positive integer")
    if pool.prefetch > MAX_PREFETCH:
        raise c.fail("[pool] prefetch", f"must be at most {MAX_PREFETCH} (a worker's task pipe must never fill), "
                                        f"got {pool.prefetch}")
    _positive(c, "[pool] handler_timeout", pool.handler_timeout)
    _positive(c, "[pool] max_deliveries", pool.max_deliveries, kind="a positive integer")
    _positive(c, "[pool] max_tasks_per_worker", pool.max_tasks_per_worker, allow_zero=True)
    _positive(c, "[pool] max_memory_mb", pool.max_memory_mb, allow_zero=True)
    _positive(c, "[pool] shutdown_grace", pool.shutdown_grace, allow_zero=True)
    _positive(c, "[pool] kill_grace", pool.kill_grace, allow_zero=True)
    _positive(c, "[pool] max_boot_failures", pool.max_boot_failures, kind="a positive integer")
    _positive(c, "[retry] attempts", retry.attempts, kind="a positive integer")
    _positive(c, "[retry] delay", retry.delay, allow_zero=True)
    _positive(c, "[retry] max_delay", retry.max_delay, allow_zero=True)
    if retry.backoff < 1:
        raise c.fail("[retry] backoff", f"must be a number >= 1, got {retry.backoff:g}")
    _positive(c, "[heartbeat] interval", hb.interval)
    _positive(c, "[heartbeat] miss_limit", hb.miss_limit, kind="a positive integer")
    _positive(c, "[ack] timeout", ack.timeout)
    _positive(c, "[ack] max_retries", ack.max_retries, allow_zero=True)
    _positive(c, "[ack] retry_delay", ack.retry_delay, allow_zero=True)
    _positive(c, "[ack] jitter", ack.jitter, allow_zero=True)
    if ack.backoff < 1:
        raise c.fail("[ack] backoff", f"must be a number >= 1, got {ack.backoff:g}")
    window = ack_retry_window(ack)
    if ack.retention <= window:
        raise c.fail(
            "[ack] retention",
            f"must be longer than the sender's retry window ({window:g}s = timeouts plus delays), "
            f"got {ack.retention:g}s; otherwise a late re-send could be handled twice",
        )


def ack_retry_window(ack: AckConfig) -> float:
    """The longest time a sender may re-publish one id: every wait plus every delay."""
    delays = sum(ack.retry_delay * ack.backoff**i + ack.jitter for i in range(ack.max_retries))
    return ack.timeout * (ack.max_retries + 1) + delays


def _positive(c: _Checker, where: str, value: float, *, allow_zero: bool = False, kind: str = "") -> None:
    if value < 0 or (value == 0 and not allow_zero):
        kind = kind or ("a number >= 0" if allow_zero else "a positive number")
        raise c.fail(where, f"must be {kind}, got {value:g}")


def _one_of(c: _Checker, where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise c.fail(where, f"must be one of {', '.join(repr(a) for a in allowed)}, got \"{value}\"")


def _handlers(c: _Checker, table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise c.fail("[handlers]", f"must be a table of type = \"module:function\", got {shown(table)}")
    handlers: dict[str, str] = {}
    for key, ref in table.items():
        where = f"[handlers] {key!r}" if not TYPE_NAME.match(key) else f"[handlers] {key}"
        if key not in SPECIAL_HANDLER_KEYS and not TYPE_NAME.match(key):
            raise c.fail(where, "is not a valid message type name")
        if not isinstance(ref, str) or not HANDLER_REF.match(ref):
            raise c.fail(where, f'must be "module:function", got {shown(ref)}')
        handlers[key] = ref
    return handlers


def _groups(c: _Checker, table: Any) -> dict[str, GroupConfig]:
    if not isinstance(table, dict):
        raise c.fail("[groups]", f"must be a table of [groups.<name>] tables, got {shown(table)}")
    groups: dict[str, GroupConfig] = {}
    for name, section in table.items():
        if not GROUP_NAME.match(name):
            raise c.fail(f"[groups.{name}]", "is not a valid group name")
        groups[name] = group = c.section(f"groups.{name}", GroupConfig, section)
        _one_of(c, f"[groups.{name}] ordering", group.ordering, ORDERINGS)
        if len(group.ordering_field) > MAX_ORDERING_KEY or group.ordering_field != group.ordering_field.strip():
            raise c.fail(f"[groups.{name}] ordering_field",
                         f"must be a payload field name (1-{MAX_ORDERING_KEY} characters, no surrounding spaces), "
                         f"got {shown(group.ordering_field)}")
    return groups


def parse_config(data: dict[str, Any], source: str = "<config>", *, environ: dict[str, str] | None = None) -> Config:
    """A parsed TOML document to a validated Config (``environ`` defaults to os.environ)."""
    c = _Checker(source)
    known = set(_SECTIONS) | {"handlers", "groups", "schedule"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise c.fail(f"[{unknown[0]}]", f"is not a known section; sections: {', '.join(sorted(known))}")
    sections = {name: c.section(name, cls, data.get(name, {})) for name, cls in _SECTIONS.items()}
    env = os.environ if environ is None else environ
    if env.get(ROOT_ENV):
        sections["spool"] = dataclasses.replace(sections["spool"], root=env[ROOT_ENV])
    if env.get(REDIS_URL_ENV):
        sections["redis"] = dataclasses.replace(sections["redis"], url=env[REDIS_URL_ENV])
    config = Config(
        **sections,
        handlers=_handlers(c, data.get("handlers", {})),
        groups=_groups(c, data.get("groups", {})),
        schedules=parse_schedules(data.get("schedule", []), c.fail),
        path=None if source == "<config>" else source,
    )
    _check_spool(c, config.spool)
    _check_numbers(c, config)
    _check_transport(c, config)
    _check_http(c, config)
    check_schedules(config.schedules, config, c.fail)
    return config


def load_config(path: str | os.PathLike[str], *, environ: dict[str, str] | None = None) -> Config:
    """Read and validate a TOML file; every problem is a ConfigError naming the file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return parse_config(data, source, environ=environ)


def handler_limit(pool: PoolConfig) -> float:
    """Seconds one handler attempt may run before its worker ends itself, whatever its supervisor does."""
    return pool.handler_timeout + pool.kill_grace + WORKER_LIMIT_MARGIN


def ordering_lease_advice(config: Config) -> str | None:
    """On Redis, why a sequence's order across supervisors may not hold through a frozen or dead one, or None.

    A stopped supervisor renewed its leases at most one ``[heartbeat] interval`` before it stopped; its
    workers start nothing queued once its loop has not run for an interval, and end what runs at
    :func:`handler_limit`; the others reclaim after ``[redis] lease`` without a renewal.
    A warning, not an error: the defaults do not meet it, a deployment that worked must still start after
    an upgrade, and whether order is relied on is the senders' choice (``orderingKey``) as much as the config's.
    """
    if config.transport.backend != "redis":
        return None
    pool, interval = config.pool, config.heartbeat.interval
    bound = handler_limit(pool) + 2 * interval
    if bound < config.redis.lease:
        return None
    ordered = sorted(name for name, group in config.groups.items() if group.ordering != "none" or group.ordering_field)
    which = f"groups {', '.join(ordered)}" if ordered else "messages with an orderingKey"
    return (f"{config.path or 'config'}: warning: order across supervisors ({which}) does not hold through a "
            f"stopped, frozen or dead supervisor: [pool] handler_timeout + [pool] kill_grace + "
            f"{WORKER_LIMIT_MARGIN:g}s + 2 x [heartbeat] interval = {pool.handler_timeout:g} + {pool.kill_grace:g} + "
            f"{WORKER_LIMIT_MARGIN:g} + 2 x {interval:g} = {bound:g}s is not below [redis] lease "
            f"({config.redis.lease:g}s), so another supervisor may run a sequence's message while a worker still "
            f"runs the one before; lower handler_timeout or kill_grace, or raise lease (docs/redis.md)")
