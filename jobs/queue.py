"""How a checkout job sits on arq's queue: its function, queue name and serializer."""

from typing import Any

import orjson
from arq.jobs import serialize_job

JOB_FUNCTION = "create_checkout_session"
WEBHOOK_FUNCTION = "notify_batch_completed"


def serialize(job: dict[str, Any]) -> bytes:
    # JSON, not arq's default pickle: a payload read from Redis must never run code.
    return orjson.dumps(job)


def deserialize(payload: bytes) -> dict[str, Any]:
    job: dict[str, Any] = orjson.loads(payload)
    return job


def job_payload(key: str, enqueued_at_ms: int, function: str = JOB_FUNCTION) -> bytes:
    """arq's stored job: the function, called with one key (an idempotency key or a batch)."""
    return serialize_job(function, (key,), {}, None, enqueued_at_ms, serializer=serialize)
