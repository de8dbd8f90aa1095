"""Which failures are worth another attempt, and how long to wait before it."""

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Statuses that say "not now" rather than "never": the same request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


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
