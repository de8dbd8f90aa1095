"""One checkout request as the dashboard may show it: never its body, so no personal data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import RecordField
from paylinks.jobs.logs import EMAIL, REDACTED
from paylinks.jobs.models import personal_data
from paylinks.jobs.records import read_fields

# The only record fields read for display: the body (`request`) and the API's raw answer
# (`response`) can hold the customer's personal data, so they are never in this list.
ROW_FIELDS: tuple[str, ...] = (
    RecordField.CHECKOUT_TOKEN,
    RecordField.STATE,
    RecordField.ATTEMPTS,
    RecordField.HTTP_STATUS,
    RecordField.ERROR,
    RecordField.ERROR_TYPE,
)
SHOWN_FIELDS: tuple[str, ...] = (
    *ROW_FIELDS,
    RecordField.BATCH,
    RecordField.ENQUEUED_AT,
    RecordField.UPDATED_AT,
    RecordField.ERROR_CODE,
    RecordField.TRACE_ID,
    RecordField.SESSION_ID,
    RecordField.URL,
    RecordField.EXPIRES_AT,
)


def scrub(text: str | None, personal: Sequence[str] = ()) -> str | None:
    """An API message with the customer's values and any e-mail address taken out: an API
    may quote the request back in its error."""
    if not text:
        return text
    for value in personal:
        text = text.replace(value, REDACTED)
    return EMAIL.sub(REDACTED, text) if "@" in text else text


@dataclass(frozen=True)
class RequestRow:
    key: str
    fields: dict[str, str | None]

    def __getattr__(self, name: str) -> str | None:
        # Templates read fields as attributes; an absent one is None.
        return self.fields.get(name)


async def read_rows(redis: Redis, page_keys: list[str]) -> list[RequestRow]:
    """Requests for a list, one round trip, with errors scrubbed of e-mail addresses."""
    rows = []
    for key, found in zip(page_keys, await read_fields(redis, page_keys, ROW_FIELDS), strict=True):
        if found is None:  # expired since it was listed
            continue
        fields: dict[str, str | None] = {name: found.get(name) for name in ROW_FIELDS}
        fields[RecordField.ERROR] = scrub(fields[RecordField.ERROR])
        rows.append(RequestRow(key, fields))
    return rows


def api_details(response: str | None) -> dict[str, str]:
    """`type`, `code` and `traceId` from the API's error answer, if it is JSON that has them;
    nothing else of the answer is kept."""
    try:
        answer = orjson.loads(response or "")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(answer, dict):
        return {}
    error = answer.get("error")
    places = [error, answer] if isinstance(error, dict) else [answer]
    found: dict[str, str] = {}
    wire_names = (
        ("type", RecordField.ERROR_TYPE),
        ("code", RecordField.ERROR_CODE),
        ("traceId", RecordField.TRACE_ID),
    )
    for name, field in wire_names:
        for place in places:
            value: Any = place.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                found[field] = str(value)
                break
    return found


async def read_request(redis: Redis, key: str) -> RequestRow | None:
    """A request's shown fields; its body is read only to know what to scrub, never shown (a
    created request keeps none, and no API error either)."""
    names = (*SHOWN_FIELDS, RecordField.REQUEST, RecordField.RESPONSE)
    (found,) = await read_fields(redis, [key], names)
    if found is None:
        return None
    fields: dict[str, str | None] = {name: found.get(name) for name in SHOWN_FIELDS}
    for name, value in api_details(found.get(RecordField.RESPONSE)).items():
        fields[name] = fields[name] or value
    try:
        parsed = orjson.loads(found.get(RecordField.REQUEST) or "")
    except orjson.JSONDecodeError:
        parsed = None
    personal = _personal(parsed) if isinstance(parsed, dict) else []
    fields[RecordField.ERROR] = scrub(fields[RecordField.ERROR], personal)
    return RequestRow(key, fields)


def _personal(body: dict[str, Any]) -> list[str]:
    """personal_data, plus the customer's names, which an API message may quote too."""
    customer = body.get("customer") or {}
    names = (
        [customer.get("firstName"), customer.get("lastName")] if isinstance(customer, dict) else []
    )
    return [*personal_data(body), *(n for n in names if isinstance(n, str) and len(n) > 2)]


async def find_by_token(redis: Redis, token: str) -> str | None:
    """The idempotency key of a checkoutToken that has a record: one lookup, no scan."""
    key = layout.idempotency_key(token)
    found = await redis.exists(layout.checkout_key(key), layout.result_key(key))
    return key if found else None
