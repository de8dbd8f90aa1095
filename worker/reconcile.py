"""Find the checkout sessions the API already holds for a checkoutToken.

The reference documents no idempotency: an API that ignores `Idempotency-Key` creates a
second session when a request is posted again after an answer that never came. It has no
filter by checkoutToken either, but it lists an owner's sessions by creation date, newest
first, and each carries its checkoutToken. So the look-up reads that list from now back to
the earliest moment the session can have been created, a page at a time, and matches the
token; each page takes a slot of the fleet's rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from pydantic import ValidationError

from paylinks.jobs.models import CheckoutSession
from paylinks.worker.conomy import ApiAnswer, ConomyClient
from paylinks.worker.ratelimit import Limiter

# The most the reference's examples page by; the page size bounds the look-ups per outcome.
PAGE_SIZE = 100
# Our clock and the API's may disagree by this much: the scan reaches this far before the
# attempt. Hosts kept by NTP are within milliseconds; a wider margin costs pages at night.
CLOCK_MARGIN = timedelta(seconds=10)
# `startDate`/`endDate` are dates, in a time zone the reference does not name: a day more on
# each side keeps the attempt's moment inside them in any zone. Costs nothing: the scan stops
# by `createdAt`, not by the dates.
DATE_MARGIN = timedelta(days=1)


class LookupFailedError(Exception):
    """The list could not be read; what was created stays unknown."""


@dataclass
class Found:
    """The sessions of one checkoutToken, oldest first, and the pages it took to know."""

    sessions: list[CheckoutSession] = field(default_factory=list)
    lookups: int = 0


async def find_sessions(
    client: ConomyClient,
    limiter: Limiter,
    *,
    owner: str,
    checkout_token: str,
    since: datetime,
    max_wait: float,
) -> Found:
    """Every session of `checkout_token` created at `since` or after (less the clock margin).

    Raises RateLimited when a page cannot have its slot in time, LookupFailedError when the API
    refuses a page or answers it with no list, and aiohttp.ClientError or TimeoutError when
    it does not answer.
    """
    oldest = since - CLOCK_MARGIN
    query = {
        "identityId": owner,
        "startDate": _date(oldest - DATE_MARGIN),
        "endDate": _date(datetime.now(UTC) + DATE_MARGIN),
        "sort": "createdAt:desc",
        "limit": str(PAGE_SIZE),
    }
    found = Found()
    offset: int | None = 0
    while offset is not None:
        async with limiter.slot(max_wait=max_wait):
            answer = await client.list_checkout_sessions({**query, "offset": str(offset)})
        found.lookups += 1
        page, following = _page(answer)
        if following is not None and following <= offset:
            raise LookupFailedError(f"listing sessions: the page after {offset} is {following}")
        offset = following
        # Sessions made while we read push older ones onto the next page, where they show
        # again: a session seen twice is one session.
        seen = {s.id for s in found.sessions}
        found.sessions += [
            s for s in page if s.checkout_token == checkout_token and s.id not in seen
        ]
        # Newest first: once a page reaches past the attempt, older pages cannot hold it.
        if not page or any(_created(s) < oldest for s in page):
            break
    found.sessions.sort(key=_created)
    return found


def _page(answer: ApiAnswer) -> tuple[list[CheckoutSession], int | None]:
    """A page's sessions and the offset of the next page, if any."""
    if not answer.ok:
        error = answer.error()
        raise LookupFailedError(f"listing sessions: HTTP {answer.status}: {error.message}")
    try:
        body = orjson.loads(answer.body)
        results = body["results"]
        pagination = body.get("pagination") or {}
        sessions = [CheckoutSession.model_validate(s) for s in results]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValidationError):
        raise LookupFailedError("listing sessions: not a page of sessions") from None
    following = pagination.get("next")
    if isinstance(following, str) and following.isdigit():
        following = int(following)
    return sessions, following if isinstance(following, int) and following > 0 else None


def _created(session: CheckoutSession) -> datetime:
    """When the API created it; a session without a readable time counts as the newest."""
    try:
        created = datetime.fromisoformat(session.created_at or "")
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _date(moment: datetime) -> str:
    """The reference's date filter: dd/mm/yyyy, in UTC."""
    return moment.astimezone(UTC).strftime("%d/%m/%Y")


def since_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
