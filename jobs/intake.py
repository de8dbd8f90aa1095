"""Turning input into checkout requests: JSON Lines, CSV through a template, or Python objects."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, NamedTuple

import orjson
from pydantic import ValidationError

from paylinks.jobs import wire
from paylinks.jobs.models import (
    AMOUNT_PATTERN,
    AMOUNT_RULE,
    DEFAULT_DURATION,
    TOKEN_PATTERN,
    TOKEN_RULE,
    CheckoutRequest,
)


class Accepted(NamedTuple):
    """A valid checkout request as it is enqueued: its token and the JSON body to send."""

    checkout_token: str
    body: bytes


# A request's line (or position) with the request, or with why it is not one.
Numbered = tuple[int, Accepted | str]

# `{column}`, or `{column:int}` for a field the API takes as a number (duration).
_PLACEHOLDER = re.compile(r"\{([^{}:]+)(:int)?\}")


class InputError(ValueError):
    """Input of which no line can be read (a template naming a column the CSV lacks): said
    once, before any row, instead of once for every row."""


def describe(error: ValidationError) -> str:
    """Each problem as `field.path: reason`, with the wire's field names."""
    parts = []
    for e in error.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        if e["type"] == "extra_forbidden":
            reason = "unknown field"
        elif e["type"] == "string_pattern_mismatch" and e["ctx"]["pattern"] == AMOUNT_PATTERN:
            reason = f"{AMOUNT_RULE}, got {e['input']!r}"
        elif e["type"] == "string_pattern_mismatch" and e["ctx"]["pattern"] == TOKEN_PATTERN:
            reason = f"{TOKEN_RULE}, got {e['input']!r}"
        elif e["type"] == "literal_error":
            reason = f"{e['msg']}, got {e['input']!r}"
        else:
            reason = e["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {reason}" if path else reason)
    return "; ".join(parts)


def parse(data: Mapping[str, Any] | CheckoutRequest) -> CheckoutRequest:
    """A checkout request from its wire form: the reference's camelCase names only."""
    if isinstance(data, CheckoutRequest):
        return data
    return CheckoutRequest.model_validate(data, by_alias=True, by_name=False)


def canonical(body: Mapping[str, Any]) -> bytes:
    """A request body as JSON with sorted keys: the same request gives the same bytes, which
    is how a token enqueued again is told apart from a token reused for another request."""
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as e:  # an integer past 64 bits, say
        raise ValueError(f"cannot be sent as JSON: {e}") from None


def accept(
    data: Mapping[str, Any] | CheckoutRequest, default_duration: int = DEFAULT_DURATION
) -> Accepted:
    """A request given as a Python object, whose values may be any type pydantic serialises."""
    if isinstance(data, Mapping) and "duration" not in data:
        data = {**data, "duration": default_duration}
    request = parse(data)
    return Accepted(request.checkout_token, canonical(request.wire()))


def _accept_json(data: Any, default_duration: int) -> Accepted:
    """A request decoded from JSON. Validation is strict and converts nothing, so what it
    accepts is already the wire form: serialising the input skips a model dump (a tenth of
    a request's intake). A valid request is checked without its model; any other is parsed
    by the model, which says why it is not valid."""
    if isinstance(data, dict):
        data.setdefault("duration", default_duration)
        if wire.valid(data):
            return Accepted(data["checkoutToken"], canonical(data))
    request = parse(data)
    return Accepted(request.checkout_token, canonical(data))


def checked(
    position: int,
    request: Mapping[str, Any] | CheckoutRequest,
    default_duration: int = DEFAULT_DURATION,
) -> Numbered:
    """A request given as a Python object, with its position, or why it is not valid."""
    try:
        return position, accept(request, default_duration)
    except ValidationError as e:  # before ValueError, of which it is a kind
        return position, describe(e)
    except ValueError as e:
        return position, str(e)


def read_json_lines(
    lines: Iterable[str | bytes], default_duration: int = DEFAULT_DURATION
) -> Iterator[Numbered]:
    """Each non-blank line's number with its checkout request, or with why it is not one;
    a request without `duration` gets `default_duration`."""
    for line_number, line in enumerate(lines, start=1):
        if not line or line.isspace():  # strip() would copy every line
            continue
        try:
            yield line_number, _accept_json(orjson.loads(line), default_duration)
        except orjson.JSONDecodeError as e:
            yield line_number, f"invalid JSON: {e}"
        except ValidationError as e:
            yield line_number, describe(e)
        except ValueError as e:
            yield line_number, str(e)


def read_csv(
    source: IO[bytes], template: Any, default_duration: int = DEFAULT_DURATION
) -> Iterator[Numbered]:
    """CSV rows mapped into requests by a JSON template whose strings name `{column}`s.

    A string that is only a placeholder for an empty cell leaves its field out, so optional
    columns (a customer's phone, a tax) can be blank; `{column:int}` gives a number. Line
    numbers count the header as line 1.
    """
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    try:
        yield from _read_rows(csv.reader(text), template, default_duration)
    finally:
        # Hand the file back open: `--strict` reads it a second time.
        text.detach()


def _read_rows(rows: Any, template: Any, default_duration: int) -> Iterator[Numbered]:
    header: list[str] = next(rows, [])
    missing = sorted(_columns(template) - set(header))
    if missing:
        raise InputError(
            f"the template names column {', '.join(map(repr, missing))}, which the CSV header lacks"
        )
    for cells in rows:
        line_number = rows.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield line_number, f"has {len(cells)} cells but the header has {len(header)}"
            continue
        row = dict(zip(header, cells, strict=True))
        try:
            yield line_number, _accept_json(_render(template, row), default_duration)
        except ValidationError as e:  # before ValueError, of which it is a kind
            yield line_number, describe(e)
        except ValueError as e:
            yield line_number, str(e)


def _columns(template: Any) -> set[str]:
    """Every column the template's placeholders name."""
    if isinstance(template, str):
        return {m.group(1) for m in _PLACEHOLDER.finditer(template)}
    if isinstance(template, dict):
        return set().union(*map(_columns, template.values()))
    if isinstance(template, list):
        return set().union(*map(_columns, template))
    return set()


def _render(template: Any, row: Mapping[str, str]) -> Any:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            column, as_int = whole.groups()
            value = row[column].strip()
            if not value or not as_int:
                return value or None
            if not value.isdigit():
                raise ValueError(f"{column}: must be a whole number, got {value!r}")
            return int(value)
        return _PLACEHOLDER.sub(lambda m: row[m.group(1)].strip(), template)
    if isinstance(template, list):
        rendered = [_render(item, row) for item in template]
        return [item for item in rendered if item is not None]
    if isinstance(template, dict):
        fields = {name: _render(value, row) for name, value in template.items()}
        kept = {name: value for name, value in fields.items() if value is not None}
        # An object whose every field came from blank cells is left out as a whole.
        return kept if kept or not template else None
    return template
