"""The arq job that tells a batch's webhook it completed: a signed POST, retried until taken."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import aiohttp
import orjson
from arq import Retry

from paylinks.jobs import layout
from paylinks.jobs.layout import BatchField
from paylinks.jobs.logs import get_logger
from paylinks.worker.retries import backoff
from paylinks.worker.tasks import Deps

SIGNATURE_HEADER = "X-Paylinks-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp is signed too,
    so a receiver can refuse an old delivery replayed at it."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


async def notify_batch_completed(ctx: dict[str, Any], batch: str) -> str:
    deps: Deps = ctx["paylinks"]
    log = get_logger(batch=batch, attempt=ctx["job_try"])
    url = await deps.redis.hget(layout.batch_key(batch), BatchField.WEBHOOK_URL)  # type: ignore[misc]
    status = await deps.outcomes.batches.status(batch)
    secret = deps.config.webhook_secret
    if not url or status is None:
        return "nothing to send"
    if secret is None:
        log.error("webhook.failed", reason="PAYLINKS_WEBHOOK_SECRET is not set")
        return "not signed"
    body = orjson.dumps({"event": "batch.completed", **status})
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(secret.get_secret_value(), int(time.time()), body),
    }
    try:
        async with deps.http.post(url, data=body, headers=headers) as response:
            delivered, reason = response.status < 300, f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        delivered, reason = False, type(e).__name__
    if delivered:
        log.info("webhook.delivered")
        return "delivered"
    if ctx["job_try"] >= deps.config.max_tries:
        log.error("webhook.failed", reason=reason)
        return "failed"
    delay = backoff(ctx["job_try"], deps.config.retry_base, deps.config.retry_cap)
    log.warning("webhook.retrying", reason=reason, retry_in_s=round(delay, 3))
    raise Retry(defer=delay)
