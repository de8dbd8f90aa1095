"""Failures grouped by reason, and dead letters a page at a time, read in bounded slices."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from redis.asyncio import Redis

from paylinks.dashboard.requests import api_details, scrub
from paylinks.jobs import layout
from paylinks.jobs.layout import RecordField
from paylinks.jobs.records import read_fields

# A batch's dead letters are looked for among at most this many of the newest, so a page
# never reads an unbounded set; the batch's `failed` count is the exact total.
SCAN_LIMIT = 10_000
EXAMPLES = 3
# Dead letters are read this many at a time, newest first.
SLICE = 500
LETTER_FIELDS = (
    RecordField.BATCH,
    RecordField.CHECKOUT_TOKEN,
    RecordField.ATTEMPTS,
    RecordField.HTTP_STATUS,
    RecordField.ERROR,
    RecordField.RESPONSE,
)


# What varies from one request to the next in an API message: quoted values, long numbers.
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|\b\d{4,}\b")


def shape(error: str | None) -> str | None:
    """An error message with what names one request taken out, so like messages group."""
    return _VARYING.sub("…", error) if error else error


@dataclass
class FailureGroup:
    http_status: str | None
    error_type: str | None
    error_code: str | None
    error: str | None
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Letter:
    key: str
    failed_at_ms: int
    batch: str
    checkout_token: str
    attempts: str | None
    http_status: str | None
    error: str | None
    error_type: str | None
    error_code: str | None


async def _slice(redis: Redis, start: int, count: int) -> list[Letter]:
    """Dead letters `start` to `start + count`, newest first, with their records' fields."""
    entries: list[tuple[str, float]] = await redis.zrange(
        layout.DEAD_LETTERS, start, start + count - 1, desc=True, withscores=True
    )
    found = await read_fields(redis, [key for key, _ in entries], LETTER_FIELDS)
    letters = []
    for (key, score), fields in zip(entries, found, strict=True):
        batch, token, attempts, status, error, response = (
            (fields or {}).get(name) for name in LETTER_FIELDS
        )
        if batch is None or token is None:  # the record expired: nothing to show or retry
            continue
        details = api_details(response)
        letters.append(
            Letter(
                key=key,
                failed_at_ms=int(score),
                batch=batch,
                checkout_token=token,
                attempts=attempts,
                http_status=status or None,
                error=scrub(error),
                error_type=details.get(RecordField.ERROR_TYPE),
                error_code=details.get(RecordField.ERROR_CODE),
            )
        )
    return letters


async def _of_batch(redis: Redis, batch: str, enough: int) -> list[Letter]:
    """The batch's dead letters among the newest `SCAN_LIMIT`, newest first, up to `enough`."""
    kept: list[Letter] = []
    for start in range(0, SCAN_LIMIT, SLICE):
        letters = await _slice(redis, start, SLICE)
        kept += [letter for letter in letters if letter.batch == batch]
        if len(kept) >= enough or len(letters) < SLICE:
            break
    return kept[:enough]


async def letters_page(
    redis: Redis, batch: str | None, page: int, per_page: int
) -> tuple[list[Letter], bool]:
    """One page of dead letters, newest first, of one batch if given; whether more follow."""
    if batch is None:
        letters = await _slice(redis, page * per_page, per_page + 1)
        return letters[:per_page], len(letters) > per_page
    kept = await _of_batch(redis, batch, (page + 1) * per_page + 1)
    return kept[page * per_page : (page + 1) * per_page], len(kept) > (page + 1) * per_page


async def failure_groups(redis: Redis, batch: str) -> list[FailureGroup]:
    """The batch's dead letters grouped by HTTP status, API type and code, and message; the
    largest group first, each with a few examples (idempotency key, checkoutToken)."""
    groups: dict[tuple[str | None, ...], FailureGroup] = {}
    for letter in await _of_batch(redis, batch, SCAN_LIMIT):
        reason = (letter.http_status, letter.error_type, letter.error_code, shape(letter.error))
        group = groups.get(reason) or groups.setdefault(reason, FailureGroup(*reason))
        group.count += 1
        if len(group.examples) < EXAMPLES:
            group.examples.append((letter.key, letter.checkout_token))
    return sorted(groups.values(), key=lambda g: -g.count)
