"""What the metrics and health tests share: a worker with its port, scrapes, and polling."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from paylinks.devtools.ports import free_port, wait_for_port
from tests.helpers import Sandbox, spawn_worker

T = TypeVar("T")
# One series: its sample name and its labels, sorted.
Series = tuple[str, tuple[tuple[str, str], ...]]


def series(name: str, **labels: str) -> Series:
    return name, tuple(sorted(labels.items()))


async def scrape(port: int) -> dict[Series, float]:
    """Every sample /metrics answers with, by name and labels."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        series(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def probe(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) of GET path, or None when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()
    except aiohttp.ClientConnectionError:
        return None


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, within: float = 30) -> T:
    """Poll `check` until it returns something, at most `within` seconds."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last is not None:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {within:.0f} s")


@contextmanager
def worker_with_port(
    env: dict[str, str], log: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A long-running worker serving its port on loopback; killed if still running at the end."""
    port = free_port()
    env = {**env, "PAYLINKS_METRICS_PORT": str(port), "PAYLINKS_METRICS_HOST": "127.0.0.1"}
    worker = spawn_worker(env, log, *args)
    try:
        wait_for_port(port)
        yield worker, port
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)


@pytest.fixture
def slow_sandbox() -> Iterator[Sandbox]:
    """A sandbox of this test's own that holds every answer for a minute: calls stay in flight
    for as long as the test looks, and none is answered into the shared sandbox afterwards."""
    slow = Sandbox(free_port(), "--latency-ms", "60000")
    try:
        wait_for_port(slow.port)
        yield slow
    finally:
        slow.stop()
