"""Valid checkout requests for the benchmarks: the example lines over and over, each with its
own checkoutToken, so every one is a new request (and a new idempotency key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "checkouts.jsonl"


def examples() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in EXAMPLES.read_bytes().splitlines() if line.strip()]


def requests(count: int, prefix: str = "BENCH") -> Iterator[dict[str, Any]]:
    """`count` valid request bodies; tokens are `{prefix}-{example token}-{i}`, all distinct."""
    bodies = examples()
    for i in range(count):
        body = dict(bodies[i % len(bodies)])
        body["checkoutToken"] = f"{prefix}-{body['checkoutToken']}-{i:07d}"
        yield body


def write_jsonl(path: Path, count: int, prefix: str = "BENCH") -> Path:
    """`count` valid requests as JSON Lines in `path` (streamed, a line each)."""
    with open(path, "wb") as out:
        for body in requests(count, prefix):
            out.write(orjson.dumps(body) + b"\n")
    return path
