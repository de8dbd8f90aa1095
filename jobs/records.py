"""Checkout records and batch counters in Redis, as producers read them back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import RecordField, State


@dataclass(frozen=True)
class Record:
    """One checkout request's record: what was asked, where it stands, and how it ended."""

    key: str
    checkout_token: str
    batch: str
    state: State
    # The body to send; empty once the request is created (the record keeps its digest).
    request: str
    attempts: int
    session_id: str | None = None
    url: str | None = None
    expires_at: str | None = None
    http_status: int | None = None
    error: str | None = None
    error_code: str | None = None
    error_type: str | None = None
    trace_id: str | None = None
    response: str | None = None
    updated_at_ms: int | None = None
    enqueued_at_ms: int = 0
    sent_at_ms: int | None = None
    duplicate_sessions: tuple[str, ...] = ()

    @classmethod
    def from_hash(cls, key: str, fields: dict[str, str]) -> Record:
        status = fields.get(RecordField.HTTP_STATUS)
        duplicates = fields.get(RecordField.DUPLICATE_SESSIONS)
        return cls(
            key=key,
            checkout_token=fields[RecordField.CHECKOUT_TOKEN],
            batch=fields[RecordField.BATCH],
            state=State(fields[RecordField.STATE]),
            request=fields.get(RecordField.REQUEST, ""),
            attempts=int(fields.get(RecordField.ATTEMPTS, 0)),
            session_id=fields.get(RecordField.SESSION_ID) or None,
            url=fields.get(RecordField.URL) or None,
            expires_at=fields.get(RecordField.EXPIRES_AT) or None,
            http_status=int(status) if status else None,
            error=fields.get(RecordField.ERROR) or None,
            error_code=fields.get(RecordField.ERROR_CODE) or None,
            error_type=fields.get(RecordField.ERROR_TYPE) or None,
            trace_id=fields.get(RecordField.TRACE_ID) or None,
            response=fields.get(RecordField.RESPONSE) or None,
            updated_at_ms=_ms(fields.get(RecordField.UPDATED_AT)),
            enqueued_at_ms=int(fields.get(RecordField.ENQUEUED_AT) or 0),
            sent_at_ms=_ms(fields.get(RecordField.SENT_AT)),
            duplicate_sessions=tuple(duplicates.split(",")) if duplicates else (),
        )

    def unanswered_since(self) -> int | None:
        """When (ms) the earliest attempt whose answer never came was sent, or None when every
        attempt was answered: then no session can exist that the record does not name."""
        if self.sent_at_ms is not None:
            return self.sent_at_ms
        if self.state == State.IN_PROGRESS and self.attempts:
            # Marked in flight by a release that kept no `sent_at`: its call went out at the
            # mark, at the latest.
            return self.updated_at_ms
        return None

    def result(self) -> dict[str, Any]:
        """The row `paylinks results` prints: pending until the request reaches a final state."""
        return {
            "checkoutToken": self.checkout_token,
            "state": self.state.value if self.state.final else "pending",
            "sessionId": self.session_id,
            "url": self.url,
            "expiresAt": self.expires_at,
            "attempts": self.attempts,
            "error": self.error,
            "errorCode": self.error_code,
            "errorType": self.error_type,
            "traceId": self.trace_id,
            "duplicateSessions": ",".join(self.duplicate_sessions) or None,
        }


RESULT_COLUMNS = [
    "checkoutToken",
    "state",
    "sessionId",
    "url",
    "expiresAt",
    "attempts",
    "error",
    "errorCode",
    "errorType",
    "traceId",
    "duplicateSessions",
]


def _ms(value: str | None) -> int | None:
    return int(value) if value else None


async def read_record(redis: Redis, key: str) -> Record | None:
    fields: dict[str, str] = await redis.hgetall(layout.checkout_key(key))  # type: ignore[misc]
    return Record.from_hash(key, fields) if fields else None


async def iter_records(redis: Redis, batch: str, page: int = 500) -> AsyncIterator[Record]:
    """A batch's records in enqueue order, read a page at a time so memory stays flat."""
    members = layout.batch_members_key(batch)
    start = 0
    while True:
        page_keys: list[str] = await redis.lrange(members, start, start + page - 1)  # type: ignore[misc]
        if not page_keys:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for key in page_keys:
                pipe.hgetall(layout.checkout_key(key))
            hashes: list[dict[str, str]] = await pipe.execute()
        for key, fields in zip(page_keys, hashes, strict=True):
            if fields:
                yield Record.from_hash(key, fields)
        start += page
