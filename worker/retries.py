"""Which failures are worth another attempt, and how long to wait before it."""

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

# Statuses that say "not now" rather than "never": the same request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# The reference's error types by code, the codes a verdict turns on besides the status.
TYPES_BY_CODE = {
    "01": "serverError",
    "02": "unknown",
    "13": "alreadyExist",
    "32": "tooManyRequests",
    "42": "unimplemented",
}


class Verdict(StrEnum):
    """What an error answer means for the request."""

    RETRY = "retry"
    # Slow down: the whole fleet pauses, then the request is retried.
    THROTTLED = "throttled"
    # The session exists already (a create that conflicts with a unique key): find it.
    EXISTS = "exists"
    PERMANENT = "permanent"


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def verdict(status: int, code: str | None = None, type_: str | None = None) -> Verdict:
    """The provider asks clients to branch on `code` or `type`; the status decides when the
    answer has neither (the older error shape, or a proxy's page)."""
    kind = type_ or TYPES_BY_CODE.get((code or "").zfill(2))
    if kind == "tooManyRequests" or (kind is None and status == 429):
        return Verdict.THROTTLED
    if kind == "alreadyExist" or (kind is None and status == 409):
        return Verdict.EXISTS
    # 501: the API cannot do this at all, so asking again changes nothing.
    if kind == "unimplemented" or status == 501:
        return Verdict.PERMANENT
    if kind in ("serverError", "unknown") or is_retryable(status):
        return Verdict.RETRY
    return Verdict.PERMANENT


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now; it may be a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the server asked for.

    Full jitter spreads a fleet's retries over the whole window, so workers that failed
    together do not come back together.
    """
    window = min(cap, base * 2 ** (attempt - 1))
    return max(retry_after or 0.0, random.uniform(0, window))
