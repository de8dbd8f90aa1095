"""The producer: enqueue checkout requests as a batch, then wait for it and read its results."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from paylinks.jobs import layout, queue
from paylinks.jobs.batches import Batches, now_ms
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.connection import connect
from paylinks.jobs.intake import Accepted, Numbered, checked
from paylinks.jobs.layout import State
from paylinks.jobs.logs import get_logger
from paylinks.jobs.models import CheckoutRequest
from paylinks.jobs.records import iter_records, read_states
from paylinks.jobs.replication import replicated
from paylinks.jobs.scripts import lua

PIPELINE_SIZE = 500
# A chunk's command (about 450 KB) is larger than a socket buffer; the event loop must get
# a turn now and then to keep writing it while the next chunk is validated.
YIELD_EVERY = 50
# Stands in for the idempotency key in the arq job made once per chunk: same shape as a key.
_KEY_SLOT = "00000000-0000-0000-0000-000000000000"

T = TypeVar("T")


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
    # Requests of this input that an earlier batch already holds, to wait for them too.
    duplicate_keys: list[str] = field(default_factory=list)
    # Where those requests are: their batch ids, with how many of them each holds.
    duplicate_batches: dict[str, int] = field(default_factory=dict)

    @property
    def opened(self) -> bool:
        """Whether the batch exists: a run that enqueued nothing new opens none."""
        return self.enqueued > 0

    def as_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch if self.opened else None,
            "enqueued": self.enqueued,
            "duplicates": self.duplicates,
            "duplicate_batches": self.duplicate_batches,
            "rejected": [{"line": r.line, "error": r.error} for r in self.rejected],
        }


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


async def _each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class Producer:
    """Enqueues checkout requests; a token already known adds no job.

    Requests are streamed: each chunk of 500 goes to Redis in one pipelined round trip, one
    Lua script per request, so memory stays flat however long the input.
    """

    def __init__(self, redis: Redis, config: ProducerConfig) -> None:
        self.redis = redis
        self.config = config
        self.batches = Batches(redis)
        self._enqueue = redis.register_script(lua("paylinks.jobs", "enqueue"))

    @classmethod
    def connect(cls, config: ProducerConfig | None = None) -> Producer:
        """A producer on the Redis that REDIS_URL names (or `config` gives)."""
        config = config or ProducerConfig()
        return cls(connect(config), config)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def enqueue(
        self,
        requests: Iterable[Mapping[str, Any] | CheckoutRequest]
        | AsyncIterable[Mapping[str, Any] | CheckoutRequest],
        batch: str | None = None,
        webhook_url: str | None = None,
    ) -> EnqueueReport:
        """Validate and enqueue requests (wire-form dicts or models) as one batch.

        An invalid request is reported by its position (from 1) and does not stop the rest.
        The batch exists only if something new was enqueued (`report.opened`); requests
        enqueued before are where `report.duplicate_batches` says.
        """
        checked_requests = _checked(requests, self.config.default_duration)
        return await self.enqueue_numbered(checked_requests, batch, webhook_url)

    async def enqueue_numbered(
        self,
        requests: Iterable[Numbered] | AsyncIterable[Numbered],
        batch: str | None = None,
        webhook_url: str | None = None,
    ) -> EnqueueReport:
        """Enqueue numbered requests, as `jobs.intake` reads them from a file, as one batch."""
        report = EnqueueReport(batch or new_batch_id())
        chunk: list[tuple[int, Accepted]] = []
        # Redis runs a chunk's script while the next chunk is read and validated here; one
        # chunk at a time, so the batch keeps the input's order.
        sending: asyncio.Task[None] | None = None
        try:
            async for line, request in _each(requests):
                if isinstance(request, str):
                    report.rejected.append(Rejection(line, request))
                    continue
                chunk.append((line, request))
                if len(chunk) % YIELD_EVERY == 0:
                    # Reading a file never yields: let the chunk in flight be written out.
                    await asyncio.sleep(0)
                if len(chunk) >= PIPELINE_SIZE:
                    if sending:
                        await sending
                    sending = asyncio.create_task(self._send(chunk, report, webhook_url))
                    chunk = []
            if sending:
                await sending
            if chunk:
                await self._send(chunk, report, webhook_url)
        finally:
            if sending and not sending.done():
                await asyncio.wait([sending])
            # Even when reading the input failed half way: what was enqueued is the batch,
            # and it must be able to complete.
            await self.batches.seal(report.batch)
        await replicated(self.redis, self.config)
        get_logger().info(
            "batch.enqueued",
            batch=report.batch if report.opened else None,
            enqueued=report.enqueued,
            duplicates=report.duplicates,
            duplicate_batches=report.duplicate_batches,
            rejected=len(report.rejected),
        )
        return report

    async def status(self, batch: str) -> dict[str, Any] | None:
        return await self.batches.status(batch)

    async def wait(self, batch: str, *, poll_interval: float = 0.5) -> dict[str, Any]:
        """The batch's status once every request ended (bound it with `asyncio.timeout`)."""
        while True:
            status = await self.batches.status(batch)
            if status is None:
                raise LookupError(f"no batch {batch!r} (unknown or expired)")
            if status["done"]:
                return status
            await asyncio.sleep(poll_interval)

    async def wait_for(
        self, idempotency_keys: list[str], *, poll_interval: float = 0.5
    ) -> dict[str, int]:
        """Wait until these requests, of whatever batch, ended; count them by final state.

        A record that expired in the meantime counts as `expired`.
        """
        counts = {State.CREATED.value: 0, State.FAILED.value: 0, "expired": 0}
        pending = idempotency_keys
        while pending:
            waiting = []
            for start in range(0, len(pending), PIPELINE_SIZE):
                page = pending[start : start + PIPELINE_SIZE]
                states = await read_states(self.redis, page)
                for key, state in zip(page, states, strict=True):
                    if state is None:
                        counts["expired"] += 1
                    elif State(state).final:
                        counts[state] += 1
                    else:
                        waiting.append(key)
            pending = waiting
            if pending:
                await asyncio.sleep(poll_interval)
        return counts

    async def results(self, batch: str) -> AsyncIterator[dict[str, Any]]:
        """One row per request, in enqueue order, streamed a page at a time."""
        async for record in iter_records(self.redis, batch):
            yield record.result()

    async def _send(
        self, chunk: list[tuple[int, Accepted]], report: EnqueueReport, webhook_url: str | None
    ) -> None:
        now = now_ms()
        ttl_ms = self.config.result_ttl * 1000
        # arq's own serializer makes the job once per chunk; each job only differs by its key.
        before, after = queue.job_payload(_KEY_SLOT, now).split(_KEY_SLOT.encode())
        idempotency_keys = [layout.idempotency_key(r.checkout_token) for _, r in chunk]
        args: list[str | bytes | int] = [
            report.batch,
            now,
            ttl_ms,
            layout.checkout_key(""),
            layout.arq_job_key(""),
            before,
            after,
            webhook_url or "",
            layout.result_key(""),
        ]
        for key, (_, request) in zip(idempotency_keys, chunk, strict=True):
            args += [key, request.checkout_token, request.body]
        not_enqueued = await self._enqueue(
            keys=[
                layout.batch_key(report.batch),
                layout.batch_members_key(report.batch),
                layout.QUEUE,
                layout.BATCHES,
            ],
            args=args,
        )
        known = {position - 1: rest for position, *rest in not_enqueued}
        log = get_logger(batch=report.batch)
        for i, (key, (line, request)) in enumerate(zip(idempotency_keys, chunk, strict=True)):
            token = request.checkout_token
            if i not in known:
                report.enqueued += 1
                # One event a request is for debugging; the batch's summary is at INFO.
                log.debug("checkout.enqueued", checkout_token=token, idempotency_key=key)
                continue
            outcome, state, owner, *stored = known[i]
            if outcome == "duplicate" or _same_request(stored[0], request.body):
                report.duplicates += 1
                report.duplicate_keys.append(key)
                report.duplicate_batches[owner] = report.duplicate_batches.get(owner, 0) + 1
                log.debug(
                    "checkout.duplicate",
                    checkout_token=token,
                    idempotency_key=key,
                    state=state,
                    existing_batch=owner,
                )
            else:
                report.rejected.append(
                    Rejection(
                        line,
                        f"checkoutToken {token!r} was already enqueued (batch {owner}, {state}) "
                        "with a different body; an idempotency key cannot be reused for "
                        "another request",
                    )
                )
                log.warning("checkout.conflict", checkout_token=token, idempotency_key=key)


def _same_request(stored: str | None, body: bytes) -> bool:
    """Whether a record's body is this request written another way: records of a release
    that kept bodies in model order, not sorted, are still there until they expire."""
    try:
        return stored is not None and orjson.loads(stored) == orjson.loads(body)
    except orjson.JSONDecodeError:
        return False


async def _checked(
    requests: Iterable[Mapping[str, Any] | CheckoutRequest]
    | AsyncIterable[Mapping[str, Any] | CheckoutRequest],
    default_duration: int,
) -> AsyncIterator[Numbered]:
    position = 0
    async for request in _each(requests):
        position += 1
        yield checked(position, request, default_duration)


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


class SyncProducer:
    """The producer for code that is not async, such as most invoicing systems.

    with SyncProducer() as producer:
        report = producer.enqueue(requests)
        producer.wait(report.batch)
        rows = list(producer.results(report.batch))
    """

    def __init__(self, config: ProducerConfig | None = None) -> None:
        self._runner = asyncio.Runner()
        self._producer = Producer.connect(config)

    def enqueue(
        self,
        requests: Iterable[Mapping[str, Any] | CheckoutRequest],
        batch: str | None = None,
        webhook_url: str | None = None,
    ) -> EnqueueReport:
        return self._runner.run(self._producer.enqueue(requests, batch, webhook_url))

    def status(self, batch: str) -> dict[str, Any] | None:
        return self._runner.run(self._producer.status(batch))

    def wait(
        self, batch: str, *, poll_interval: float = 0.5, timeout: float | None = None
    ) -> dict[str, Any]:
        waiting = self._producer.wait(batch, poll_interval=poll_interval)
        return self._runner.run(asyncio.wait_for(waiting, timeout))

    def results(self, batch: str) -> Iterator[dict[str, Any]]:
        rows = self._producer.results(batch)
        while True:
            try:
                yield self._runner.run(_next(rows))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._runner.run(self._producer.close())
        self._runner.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
