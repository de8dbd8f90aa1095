"""Validate checkout requests and enqueue them into Redis as a batch, one pipelined script each."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis

from jobs import keys, queue
from jobs.config import ProducerConfig
from jobs.logs import get_logger
from jobs.models import CheckoutRequest
from jobs.records import lua

PIPELINE_SIZE = 500


@dataclass(frozen=True)
class Rejection:
    line: int
    error: str


@dataclass
class EnqueueReport:
    batch: str
    enqueued: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "enqueued": self.enqueued,
            "duplicates": self.duplicates,
            "rejected": [{"line": r.line, "error": r.error} for r in self.rejected],
        }


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def describe(error: ValidationError) -> str:
    """Each problem as `field.path: reason`, with the wire's field names."""
    parts = []
    for e in error.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        reason = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        reason = reason.removeprefix("Value error, ")
        parts.append(f"{path}: {reason}" if path else reason)
    return "; ".join(parts)


def parse(data: dict[str, Any] | CheckoutRequest) -> CheckoutRequest:
    """A checkout request from its wire form: the reference's camelCase names only."""
    if isinstance(data, CheckoutRequest):
        return data
    return CheckoutRequest.model_validate(data, by_alias=True, by_name=False)


def read_json_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, CheckoutRequest | str]]:
    """Each non-blank line's number with its checkout request, or with why it is not one."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, parse(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            yield number, f"invalid JSON: {e}"
        except ValidationError as e:
            yield number, describe(e)


class Producer:
    """Enqueues checkout requests; a token already known adds no job."""

    def __init__(self, redis: Redis, settings: ProducerConfig) -> None:
        self.redis = redis
        self.settings = settings
        self._enqueue = redis.register_script(lua("jobs", "enqueue"))
        self._seal = redis.register_script(lua("jobs", "seal"))

    async def enqueue(
        self,
        requests: Iterable[tuple[int, CheckoutRequest | str]],
        batch: str | None = None,
    ) -> EnqueueReport:
        """Enqueue numbered requests (as `read_json_lines` yields them) into one batch."""
        report = EnqueueReport(batch or new_batch_id())
        chunk: list[tuple[int, CheckoutRequest]] = []
        for number, request in requests:
            if isinstance(request, str):
                report.rejected.append(Rejection(number, request))
                continue
            chunk.append((number, request))
            if len(chunk) >= PIPELINE_SIZE:
                await self._send(chunk, report)
                chunk = []
        if chunk:
            await self._send(chunk, report)
        if await self._seal(keys=[keys.batch_key(report.batch)], args=[_now_ms()]):
            get_logger().info("batch.completed", batch=report.batch)
        return report

    async def _send(self, chunk: list[tuple[int, CheckoutRequest]], report: EnqueueReport) -> None:
        now = _now_ms()
        ttl_ms = self.settings.result_ttl * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, request in chunk:
                key = keys.idempotency_key(request.checkout_token)
                body = orjson.dumps(request.wire())
                await self._enqueue(
                    keys=[
                        keys.checkout_key(key),
                        keys.batch_key(report.batch),
                        keys.batch_members_key(report.batch),
                        keys.arq_job_key(key),
                        keys.QUEUE,
                    ],
                    args=[
                        key,
                        request.checkout_token,
                        report.batch,
                        hashlib.sha256(body).hexdigest(),
                        body,
                        queue.job_payload(key, now),
                        now,
                        ttl_ms,
                        ttl_ms,
                    ],
                    client=pipe,
                )
            outcomes = await pipe.execute()
        log = get_logger(batch=report.batch)
        for (number, request), (outcome, state, owner) in zip(chunk, outcomes, strict=True):
            token = request.checkout_token
            key = keys.idempotency_key(token)
            if outcome == "enqueued":
                report.enqueued += 1
                log.info("checkout.enqueued", checkout_token=token, idempotency_key=key)
            elif outcome == "duplicate":
                report.duplicates += 1
                log.info(
                    "checkout.duplicate",
                    checkout_token=token,
                    idempotency_key=key,
                    state=state,
                    existing_batch=owner,
                )
            else:
                report.rejected.append(
                    Rejection(
                        number,
                        f"checkoutToken {token!r} was already enqueued (batch {owner}, {state}) "
                        "with a different body; an idempotency key cannot be reused for "
                        "another request",
                    )
                )
                log.warning("checkout.conflict", checkout_token=token, idempotency_key=key)


def _now_ms() -> int:
    return int(time.time() * 1000)
