"""The sandbox's `GET /checkout-sessions`: the reference's filters, sort and pagination over
the sessions it holds, apart from the server so that they read as the contract does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

# The reference names no default page size; this one is small enough to make paging show.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class BadQueryError(ValueError):
    """A query parameter the list cannot read: answered 400 invalidParam."""


def list_page(sessions: Iterable[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """`{"pagination": {"count", "next", "previous", "total"}, "results": [...]}`, where `next`
    and `previous` are offsets, or None at either end."""
    # Whole days, both ends included, in UTC (the reference names no time zone).
    start = _day_start(query["startDate"]) if "startDate" in query else None
    end = _day_start(query["endDate"]) + timedelta(days=1) if "endDate" in query else None
    selected = [
        s
        for s in sessions
        if _matches(s, query)
        and (start is None or created_at(s) >= start)
        and (end is None or created_at(s) < end)
    ]
    selected = _sorted(selected, query.get("sort", "createdAt:asc"))
    limit = _number(query, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    offset = _number(query, "offset", 0)
    page = selected[offset : offset + limit]
    return {
        "pagination": {
            "count": len(page),
            "next": offset + limit if offset + limit < len(selected) else None,
            "previous": max(offset - limit, 0) if offset > 0 else None,
            "total": len(selected),
        },
        "results": page,
    }


def _matches(session: dict[str, Any], query: Mapping[str, str]) -> bool:
    if "identityId" in query and session["owner"].get("identityId") != query["identityId"]:
        return False
    if "status" in query and session["status"] != query["status"]:
        return False
    if "accountNumber" in query:
        numbers = {d["account"].get("accountNumber") for d in session["destinations"]}
        if query["accountNumber"] not in numbers:
            return False
    return True


def _sorted(sessions: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    field, _, direction = sort.partition(":")
    if direction not in ("asc", "desc") or not field:
        raise BadQueryError("sort must be param:asc or param:desc")
    ordered = sorted(sessions, key=lambda s: str(s.get(field) or ""))
    # Reversed, not sorted in reverse: sessions made in one millisecond keep their order.
    return ordered[::-1] if direction == "desc" else ordered


def created_at(session: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(session["createdAt"])


def _day_start(text: str) -> datetime:
    try:
        day = datetime.strptime(text, "%d/%m/%Y").date()
    except ValueError:
        raise BadQueryError(f"{text!r} is not a date dd/mm/yyyy") from None
    return datetime.combine(day, time(), UTC)


def _number(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise BadQueryError(f"{name} must be a whole number")
    return int(text)
