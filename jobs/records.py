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
    request: str
    attempts: int
    session_id: str | None = None
    url: str | None = None
    expires_at: str | None = None
    http_status: int | None = None
    error: str | None = None
    response: str | None = None

    @classmethod
    def from_hash(cls, key: str, fields: dict[str, str]) -> Record:
        status = fields.get(RecordField.HTTP_STATUS)
        return cls(
            key=key,
            checkout_token=fields[RecordField.CHECKOUT_TOKEN],
            batch=fields[RecordField.BATCH],
            state=State(fields[RecordField.STATE]),
            request=fields[RecordField.REQUEST],
            attempts=int(fields.get(RecordField.ATTEMPTS, 0)),
            session_id=fields.get(RecordField.SESSION_ID) or None,
            url=fields.get(RecordField.URL) or None,
            expires_at=fields.get(RecordField.EXPIRES_AT) or None,
            http_status=int(status) if status else None,
            error=fields.get(RecordField.ERROR) or None,
            response=fields.get(RecordField.RESPONSE) or None,
        )

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
        }


RESULT_COLUMNS = ["checkoutToken", "state", "sessionId", "url", "expiresAt", "attempts", "error"]


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
