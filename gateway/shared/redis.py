"""The Redis connection of one worker, and the names of its keys.

Built from the config's `[redis]` section:

- `url`: ``redis://[user:password@]host:port/db``,
  ``rediss://...`` (TLS; ``?ssl_cert_reqs=...`` and the other query
  arguments redis-py's ``from_url`` takes) or ``unix:///path/to/socket?db=0``.
  Valkey speaks the same protocol and works alike.
- `prefix`: put before every key, so several fleets can share one Redis.

One client per worker process (`client()`): redis-py's asyncio client with
its own connection pool (hiredis parses replies when it is installed). Build
it inside the worker, after the fork: a pool must not cross a fork.

Keys (`key()`): ``<prefix>{<scope>}:<name>``. Everything of one school lives
in the scope ``school:<name>`` (a pool's in ``pool:<name>``): the braces are
a Redis Cluster hash tag, so all keys of one scope hash to one slot and a
Lua script may touch several of them. Braces inside a name are replaced
(a second ``{`` would end the tag early).

redis-py is imported on the first call to `client()`, never at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config.schema import Redis as RedisConfig

# Seconds a command may take before the background task gives up on it.
# The request path never waits on Redis; this only bounds how soon a hung
# connection is noticed (fail static then takes over).
SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0


def client(cfg: RedisConfig, **overrides: Any) -> Any:
    """A `redis.asyncio.Redis` for `cfg.url` (bytes replies, short socket
    timeouts, no retries: a failed round is simply tried again at the next
    one). `overrides` go to ``Redis.from_url``. ValueError for an empty or
    malformed URL (the config check already refuses other schemes)."""
    if not cfg.url:
        raise ValueError("redis.url is empty")
    import redis.asyncio as aioredis

    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry_on_timeout": False,
        "health_check_interval": 0,
        "decode_responses": False,
    }
    options.update(overrides)
    return aioredis.Redis.from_url(cfg.url, **options)


def _tag(text: str) -> str:
    return text.replace("{", "(").replace("}", ")")


def scope(kind: str, name: str) -> str:
    """The hash-tag scope of a school (kind "school") or pool ("pool")."""
    return f"{kind}:{_tag(name)}"


def key(prefix: str, school: str, name: str, kind: str = "school") -> str:
    """``<prefix>{<kind>:<school>}:<name>``: the key `name` of one school
    (or, kind="pool", of one pool). All keys of one scope share a Redis
    Cluster hash slot."""
    return scoped_key(prefix, scope(kind, school), name)


def scoped_key(prefix: str, scope: str, name: str) -> str:
    """The key `name` in a scope made by scope()."""
    return f"{prefix}{{{scope}}}:{name}"


__all__ = ["client", "key", "scope", "scoped_key"]
