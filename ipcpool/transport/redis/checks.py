"""What ``ipcpool run`` refuses before it starts on Redis (exit 2, the setting and the fix named).

- Redis older than 6.2: XAUTOCLAIM, which recovers a dead supervisor's
  messages, came in 6.2.
- A ``maxmemory-policy`` that may evict keys: under memory pressure Redis
  would drop queued messages and acks without a word. Queues need ``noeviction``
  (a full Redis then refuses writes, which senders see and retry).
- An ACL user that may not run MULTI/EXEC or CLIENT REPLY: a worker sends its
  completions as a MULTI/EXEC with replies off, so a refusal would only show
  later, as acks held; it is named now, with the grant that fixes it.
- Persistence off (no AOF, no RDB snapshots): a warning, saying what a Redis
  restart would lose (every queued message and every ack).
"""

from __future__ import annotations

import logging

import redis.exceptions

from ipcpool.config import Config
from ipcpool.errors import ConfigError, TransportUnavailable
from ipcpool.transport.redis.connection import UNAVAILABLE, connect, where
from ipcpool.transport.redis.keys import Keys

log = logging.getLogger(__name__)
MIN_VERSION = (6, 2)


def check_server(config: Config) -> None:
    client = connect(config, timeout=5.0)
    try:
        info = client.info()
        persistent = _persistent(client)
        _may_complete(client, config)
    except UNAVAILABLE as exc:
        raise TransportUnavailable(f"[redis] url: cannot reach Redis at {where(config)} ({exc}); start it, or fix "
                                   "the url (IPCPOOL_REDIS_URL overrides it)") from exc
    except redis.exceptions.NoPermissionError as exc:
        raise ConfigError(f"[redis] url: the Redis user ipcpool connects as at {where(config)} may not run what "
                          f"a completion needs ({exc}): grant it +@transaction and +client|reply (the "
                          "README's ACL SETUSER line has every grant ipcpool needs)") from exc
    except redis.exceptions.ResponseError as exc:  # an ACL that forbids INFO, a wrong password
        raise ConfigError(f"[redis] url: Redis at {where(config)} refused ipcpool: {exc}") from exc
    finally:
        client.close()
    version = tuple(int(part) for part in _text(info.get("redis_version", "0")).split(".")[:2])
    if version < MIN_VERSION:
        raise ConfigError(f"[redis] url: Redis at {where(config)} is version {_text(info.get('redis_version'))}; "
                          "ipcpool needs 6.2 or newer (XAUTOCLAIM recovers a dead supervisor's messages): upgrade it")
    policy = _text(info.get("maxmemory_policy", ""))
    if policy not in ("", "noeviction"):
        raise ConfigError(f"[redis] url: Redis at {where(config)} has maxmemory-policy {policy}: it may evict "
                          "queued messages and acks under memory pressure. Set `maxmemory-policy noeviction` "
                          "(CONFIG SET maxmemory-policy noeviction, and in redis.conf)")
    if persistent is False:
        log.warning("Redis at %s keeps nothing on disk (appendonly no, no save points): a Redis restart loses "
                    "every queued message and every ack (a re-sent message could then be handled twice). "
                    "Turn on `appendonly yes`", where(config))


def _may_complete(client: redis.Redis, config: Config) -> None:
    """A completion's commands, tried: an empty MULTI/EXEC on one of the prefix's keys, and CLIENT REPLY ON."""
    client.pipeline(transaction=True).exists(Keys(config.redis.prefix).groups).execute()
    client.execute_command("CLIENT", "REPLY", "ON")


def _persistent(client: redis.Redis) -> bool | None:
    """AOF or RDB save points configured; None when CONFIG is not allowed (a managed Redis, an ACL)."""
    try:
        settings = {**client.config_get("appendonly"), **client.config_get("save")}
    except redis.exceptions.ResponseError:
        return None
    values = {_text(k): _text(v) for k, v in settings.items()}
    return values.get("appendonly") == "yes" or bool(values.get("save", "").strip())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
