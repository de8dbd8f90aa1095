"""Redis clients that ride out a Redis restart, and the check that Redis is there at all."""

from urllib.parse import urlsplit

import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

# Commands are retried for about half a minute while Redis comes back, instead of failing a
# job or a producer on the first refused connection. OSError too: redis-py reconnects a pooled
# connection outside a command's retry, where a refused connect is a bare OSError.
RETRY_ON_ERROR: list[type[Exception]] = [ConnectionError, TimeoutError, OSError]
# Seconds a command gives a Redis that is not there when it starts.
REACH_TIMEOUT = 3.0


class RedisUnreachableError(Exception):
    """Redis does not answer at REDIS_URL; the message is one line for the operator."""


def restart_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=2, base=0.05), retries=20)


def connect(url: str) -> Redis:
    """A client for paylinks' own keys: strings in and out."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        retry=restart_retry(),
        retry_on_error=RETRY_ON_ERROR,
    )
    return client


def address(url: str) -> str:
    """Where a Redis URL points, without its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def check_reachable(url: str) -> None:
    """Fail at once when Redis is not there: riding out a restart is for a Redis that was.

    Raises RedisUnreachableError.
    """
    probe = redis.Redis.from_url(
        url, socket_connect_timeout=REACH_TIMEOUT, socket_timeout=REACH_TIMEOUT, retry=None
    )
    try:
        probe.ping()
    # Any RedisError: something that is not Redis, or refuses us, may answer at that address.
    except (RedisError, OSError) as e:
        raise RedisUnreachableError(
            f"cannot reach Redis at {address(url)} (REDIS_URL): {e}".rstrip(". ")
        ) from None
    finally:
        probe.close()
