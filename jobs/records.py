"""Checkout records and created results in Redis, as producers and the dashboard read them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
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
    # The body to send; empty once the request is created (its result keeps a digest).
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


def result_value(fields: Mapping[str, str | int | None]) -> str:
    """The result string of a created request's fields (`updated_at` absolute, in ms), as
    `transition.lua` writes it: for tests and benchmarks that store results themselves."""
    values = dict(fields)
    enqueued = int(values.get(RecordField.ENQUEUED_AT) or 0)
    updated = values.get(RecordField.UPDATED_AT)
    values[RecordField.UPDATED_AT] = int(updated) - enqueued if updated else None
    packed = [
        "" if values.get(name) is None else str(values[name]).replace(layout.RESULT_SEPARATOR, " ")
        for name in layout.RESULT_FIELDS
    ]
    while packed and not packed[-1]:
        packed.pop()
    return layout.RESULT_SEPARATOR.join(packed)


def result_fields(value: str) -> dict[str, str]:
    """A created request's result as the fields of a record (`updated_at` absolute)."""
    values = value.split(layout.RESULT_SEPARATOR)
    fields: dict[str, str] = {
        name: v for name, v in zip(layout.RESULT_FIELDS, values, strict=False) if v
    }
    fields[RecordField.STATE] = State.CREATED.value
    if RecordField.UPDATED_AT in fields:
        enqueued = int(fields.get(RecordField.ENQUEUED_AT) or 0)
        fields[RecordField.UPDATED_AT] = str(enqueued + int(fields[RecordField.UPDATED_AT]))
    return fields


async def read_record(redis: Redis, key: str) -> Record | None:
    """A request's record, or its result once created; None when it is unknown or expired.

    The result is read only when the record is not there: a record becomes its result in one
    script, so the result is there once the record is not.
    """
    fields: dict[str, str] = await redis.hgetall(layout.checkout_key(key))  # type: ignore[misc]
    if fields:
        return Record.from_hash(key, fields)
    return record_of(key, await redis.get(layout.result_key(key)))


def record_of(key: str, stored: list[str] | str | None) -> Record | None:
    """A request's record from what a script read of it: its fields as HGETALL lists them, its
    result (a string) once created, or None when it is unknown or expired."""
    if stored is None:
        return None
    if isinstance(stored, str):
        return Record.from_hash(key, result_fields(stored))
    return Record.from_hash(key, dict(zip(stored[::2], stored[1::2], strict=True)))


async def read_fields(
    redis: Redis, keys: Sequence[str], names: Sequence[str] | None = None
) -> list[dict[str, str] | None]:
    """The fields `names` (all when None) of these requests, from their records or results,
    in one round trip, each with its `state`; None for a request unknown or expired. A field
    absent is left out."""
    wanted = None if names is None else list(dict.fromkeys([RecordField.STATE, *names]))
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            if wanted is None:
                pipe.hgetall(layout.checkout_key(key))
            else:
                pipe.hmget(layout.checkout_key(key), wanted)
            pipe.get(layout.result_key(key))
        found: list[Any] = await pipe.execute()
    read: list[dict[str, str] | None] = []
    for stored, result in zip(found[::2], found[1::2], strict=True):
        pairs = stored.items() if wanted is None else zip(wanted, stored, strict=True)
        fields = {name: value for name, value in pairs if value is not None}
        if RecordField.STATE not in fields and result is not None:
            fields = result_fields(result)
            if wanted is not None:
                fields = {name: fields[name] for name in wanted if name in fields}
        read.append(fields if RecordField.STATE in fields else None)
    return read


async def read_states(redis: Redis, keys: Sequence[str]) -> list[str | None]:
    """The state of each request, in one round trip; None for one unknown or expired."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(layout.checkout_key(key), RecordField.STATE)
            pipe.exists(layout.result_key(key))
        found: list[Any] = await pipe.execute()
    return [
        state or (State.CREATED.value if result else None)
        for state, result in zip(found[::2], found[1::2], strict=True)
    ]


async def iter_records(redis: Redis, batch: str, page: int = 500) -> AsyncIterator[Record]:
    """A batch's records in enqueue order, read a page at a time so memory stays flat."""
    members = layout.batch_members_key(batch)
    start = 0
    while True:
        page_keys: list[str] = await redis.lrange(members, start, start + page - 1)  # type: ignore[misc]
        if not page_keys:
            return
        for key, fields in zip(page_keys, await read_fields(redis, page_keys), strict=True):
            if fields:
                yield Record.from_hash(key, fields)
        start += page
