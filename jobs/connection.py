"""A Redis client for paylinks' own keys that rides out a Redis restart."""

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry


def connect(url: str) -> Redis:
    # Commands are retried for about half a minute while Redis comes back, instead of
    # failing the job or the producer on the first refused connection.
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2, base=0.05), retries=20),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return client
