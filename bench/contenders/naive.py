"""Contender (a): the script anyone would write first. No Redis, no records, no retries.

    python -m bench.contenders.naive BODIES URL [CONCURRENCY]

Reads `key<TAB>body` lines, then posts every body to URL with one aiohttp ClientSession (its
pool as large as the concurrency, as paylinks' is) under a semaphore, with paylinks' headers
and `Idempotency-Key`, on uvloop. Prints one JSON line: the answers by HTTP status.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import uvloop

from bench.contenders import base_headers


async def post_all(url: str, pairs: list[tuple[str, bytes]], concurrency: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    headers = base_headers()
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=15, connect=5)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def post(key: str, body: bytes) -> None:
            async with (
                semaphore,
                http.post(url, data=body, headers={**headers, "Idempotency-Key": key}) as answer,
            ):
                await answer.read()
                statuses[answer.status] += 1

        await asyncio.gather(*(post(key, body) for key, body in pairs))
    return statuses


def main() -> None:
    bodies, url = Path(sys.argv[1]), sys.argv[2]
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    pairs = []
    for line in bodies.read_bytes().splitlines():
        key, _, body = line.partition(b"\t")
        pairs.append((key.decode(), body))
    statuses = uvloop.run(post_all(url, pairs, concurrency))
    print(orjson.dumps({"statuses": statuses}, option=orjson.OPT_NON_STR_KEYS).decode())


if __name__ == "__main__":
    main()
