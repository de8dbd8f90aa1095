"""Redis clients that ride out a Redis restart."""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# Commands are retried for about half a minute while Redis comes back, instead of failing a
# job or a producer on the first refused connection. OSError too: redis-py reconnects a pooled
# connection outside a command's retry, where a refused connect is a bare OSError.
RETRY_ON_ERROR: list[type[Exception]] = [ConnectionError, TimeoutError, OSError]


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
