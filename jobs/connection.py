"""Redis clients from the settings (an ACL user, TLS, Sentinel) that ride out a restart or a
failover, and the check that Redis is there at all: the one place that makes a client."""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from arq.connections import ArqRedis
from pydantic import RedisDsn
from redis._parsers.hiredis import _AsyncHiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import HiredisRespSerializer, parse_url
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, TimeoutError

from paylinks.jobs import layout, queue
from paylinks.jobs.config import RedisConfig

# Commands are retried for about half a minute while Redis comes back, or a sentinel names
# the new primary, instead of failing a job or a producer on the first refused connection.
# OSError too: redis-py reconnects a pooled connection outside a command's retry, where a
# refused connect is a bare OSError.
RETRY_ON_ERROR: list[type[Exception]] = [ConnectionError, TimeoutError, OSError]
# Seconds a command gives a Redis that is not there when it starts; and a sentinel, always:
# one that does not answer is skipped for the next.
REACH_TIMEOUT = 3.0


class RedisUnreachableError(Exception):
    """Redis does not answer at REDIS_URL; the message is one line for the operator."""


class RedisCredentialsRejectedError(RedisUnreachableError):
    """Redis answers, but refuses REDIS_URL's user and password: waiting will not help."""


def restart_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=2, base=0.05), retries=20)


class _LeanConnection(AbstractConnection):
    """redis-py's asyncio connection without two costs its other clients do not pay (measured
    in the README's *One worker ahead of plain arq*)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        # In C with hiredis, as redis-py's blocking connections do; its asyncio ones pack in
        # Python, one argument at a time.
        packed: list[bytes] = self._packer.pack(*args)
        return packed

    async def can_read_destructive(self) -> bool:
        """Whether a pooled connection holds unread data, or its server closed it: checked
        before every command. redis-py 5 finds out with a zero-timeout read of the socket,
        a cancelled read per command; since its PR #4063 (redis-py 8) it looks at the buffers
        instead, as this does."""
        parser, reader, stream = self._parser, None, None
        if isinstance(parser, _AsyncHiredisParser) and parser._connected:
            reader, stream = parser._reader, parser._stream
        if reader is None or stream is None:
            readable: bool = await super().can_read_destructive()  # type: ignore[no-untyped-call]
            return readable
        if reader.has_data():
            return True
        if stream.at_eof() or stream.exception() is not None:
            raise ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        return bool(stream._buffer)  # private, and what redis-py 8 reads too


class _Connection(_LeanConnection, Connection):
    pass


class _SSLConnection(_LeanConnection, SSLConnection):
    pass


class _UnixConnection(_LeanConnection, UnixDomainSocketConnection):
    pass


# The lean connection each URL scheme gets (`from_url` picks the one on the left).
_LEAN: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _Connection,
    SSLConnection: _SSLConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


class _SentinelConnection(_LeanConnection, SentinelManagedConnection):
    """Tries the address the sentinels gave once: redis-py would retry that address for as
    long as its retries last (half a minute) before asking them again, while a failover
    names another within seconds. The retries are spent asking the sentinels again."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = retry


class _SentinelSSLConnection(_SentinelConnection, SentinelManagedSSLConnection):
    pass


def settings_for(target: RedisConfig | str) -> RedisConfig:
    """The settings, or a bare URL's: no TLS files, no sentinels, no replicas to wait for."""
    if isinstance(target, RedisConfig):
        return target
    return RedisConfig.model_construct(redis_url=RedisDsn(target))


def connect(target: RedisConfig | str) -> Redis:
    """A client for paylinks' own keys: strings in and out."""
    client: Redis = _open(settings_for(target), Redis, decode_responses=True)
    return client


def arq_pool(config: RedisConfig, client: type[ArqRedis] = ArqRedis) -> ArqRedis:
    """arq's own client (bytes, as arq reads them), of class `client`, reaching Redis the
    same way."""
    pool: ArqRedis = _open(config, client)
    pool.default_queue_name = layout.QUEUE
    pool.job_serializer = queue.serialize
    pool.job_deserializer = queue.deserialize
    return pool


def _open(config: RedisConfig, client: type[Any], **options: Any) -> Any:
    """An asyncio client of class `client`, or a blocking one (a `redis.Redis`, which only
    probes, and so does not retry)."""
    blocking = issubclass(client, redis.Redis)
    options["health_check_interval"] = 10
    if not blocking:
        options |= {"retry": restart_retry(), "retry_on_error": RETRY_ON_ERROR}
    url = str(config.redis_url)
    if not config.redis_sentinels:
        opened = client.from_url(url, **_tls(config), **options)
        if not blocking:
            # Set once made: `from_url` lets the URL's scheme override a connection class
            # passed to it, and a pool makes its connections only when first asked.
            pool = opened.connection_pool
            pool.connection_class = _LEAN.get(pool.connection_class, pool.connection_class)
        return opened
    # The URL gives the user, password, database and TLS; the sentinels give the address.
    options |= {
        name: value
        for name, value in parse_url(url).items()  # type: ignore[no-untyped-call]
        if name not in ("host", "port", "connection_class")
    }
    manager = (redis.sentinel.Sentinel if blocking else Sentinel)(
        config.redis_sentinels,
        sentinel_kwargs=_sentinel_options(config),
        **_tls(config),
        **options,
    )
    if blocking:
        return manager.master_for(config.redis_sentinel_master, redis_class=client)
    connection = _SentinelSSLConnection if _tls(config) else _SentinelConnection
    return manager.master_for(
        config.redis_sentinel_master, redis_class=client, connection_class=connection
    )


def _tls(config: RedisConfig) -> dict[str, Any]:
    if config.redis_url.scheme != "rediss":
        return {}
    files = {
        "ssl_ca_certs": config.redis_ca_file,
        "ssl_certfile": config.redis_cert_file,
        "ssl_keyfile": config.redis_key_file,
    }
    # `ssl` picks the TLS connection of a sentinel-managed pool; from_url takes the scheme.
    options: dict[str, Any] = {"ssl": True} if config.redis_sentinels else {}
    return options | {name: str(path) for name, path in files.items() if path is not None}


def _sentinel_options(config: RedisConfig) -> dict[str, Any]:
    # Sentinels speak TLS when the servers do; their password is their own.
    options: dict[str, Any] = {
        "socket_connect_timeout": REACH_TIMEOUT,
        "socket_timeout": REACH_TIMEOUT,
    }
    if config.redis_sentinel_password is not None:
        options["password"] = config.redis_sentinel_password.get_secret_value()
    return options | _tls(config)


def address(target: RedisConfig | str) -> str:
    """Where the settings point, without credentials."""
    config = settings_for(target)
    if config.redis_sentinels:
        sentinels = ", ".join(f"{host}:{port}" for host, port in config.redis_sentinels)
        return f"primary {config.redis_sentinel_master!r} via sentinels {sentinels}"
    url = config.redis_url
    if url.scheme == "unix":
        return url.path or ""
    return f"{url.host}:{url.port or 6379}"


def where(target: RedisConfig | str) -> str:
    """Where the settings point, and which setting says so: for a message."""
    config = settings_for(target)
    setting = "PAYLINKS_REDIS_SENTINELS" if config.redis_sentinels else "REDIS_URL"
    return f"{address(config)} ({setting})"


def check_reachable(target: RedisConfig | str) -> None:
    """Fail at once when Redis is not there: riding out a restart is for a Redis that was.

    Raises RedisUnreachableError, or RedisCredentialsRejectedError.
    """
    config = settings_for(target)
    probe: redis.Redis = _open(
        config, redis.Redis, socket_connect_timeout=REACH_TIMEOUT, socket_timeout=REACH_TIMEOUT
    )
    try:
        probe.ping()
    except AuthenticationError as e:
        raise RedisCredentialsRejectedError(
            f"Redis at {where(config)} refused REDIS_URL's user and password: {_said(e)}"
        ) from None
    # Any RedisError: something that is not Redis, or refuses us, may answer at that address.
    except (RedisError, OSError) as e:
        raise RedisUnreachableError(f"cannot reach Redis at {where(config)}: {_said(e)}") from None
    finally:
        probe.close()


def _said(error: Exception) -> str:
    """What redis-py said, on one line: it names host:port, never a password."""
    return " ".join(str(error).split()).rstrip(". ") or type(error).__name__
