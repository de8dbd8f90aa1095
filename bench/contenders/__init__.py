"""What the throughput section runs paylinks against, and what every contender shares.

Each contender is its own process (`python -m bench.contenders.naive`, `... .plain_arq`), so
that its CPU time and peak RSS can be read from `wait4` alone. They post the very bytes
paylinks stores for a request, with the same headers, and run on uvloop, as paylinks does.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.data import requests
from paylinks import __version__
from paylinks.jobs.intake import parse
from paylinks.jobs.layout import idempotency_key

API_KEY = "sandbox-key"
ACCESS_TOKEN = "sandbox-token"
API_VERSION = "24-04-2025"


def wire_bodies(count: int, prefix: str) -> list[tuple[str, bytes]]:
    """(idempotency key, body) pairs: the bytes paylinks' producer stores and its worker sends."""
    pairs = []
    for body in requests(count, prefix):
        request = parse(body)
        pairs.append((idempotency_key(request.checkout_token), orjson.dumps(request.wire())))
    return pairs


def write_bodies(path: Path, pairs: list[tuple[str, bytes]]) -> Path:
    """One `key<TAB>body` line per request, for the naive contender to read."""
    with open(path, "wb") as out:
        for key, body in pairs:
            out.write(key.encode() + b"\t" + body + b"\n")
    return path


def base_headers() -> dict[str, str]:
    """The headers paylinks' client sends (worker/conomy.py), less the per-call key."""
    return {
        "x-api-key": API_KEY,
        "conomyhq-api-version": API_VERSION,
        "User-Agent": f"paylinks/{__version__}",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {ACCESS_TOKEN}",
    }
