"""What the tests share besides fixtures: the services' names, the `paylinks` command and
worker processes, the sandbox's control endpoints, and requests to enqueue."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.jobs import layout
from paylinks.jobs.batches import Batches

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHECKOUTS = EXAMPLES / "checkouts.jsonl"
ACCESS_TOKEN = "sandbox-token"
API_KEY = "sandbox-key"
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"


class Sandbox:
    """The sandbox API in its own process, driven through its control endpoints."""

    def __init__(self, port: int, *flags: str) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/sandbox"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "paylinks", "sandbox", "--port", str(port), *flags],
            stderr=subprocess.DEVNULL,
        )
        # The API runs on hosts of its own; here it shares two cores with the workers it
        # counts. Ahead of them for the CPU (where the tests may raise a priority: as root),
        # it stamps a call when the call arrives, not when a core comes free.
        with suppress(PermissionError):
            raised = os.getpriority(os.PRIO_PROCESS, 0) - 10
            os.setpriority(os.PRIO_PROCESS, self.process.pid, raised)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.base_url}/_control/{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.control("GET", "stats")
        return stats

    async def faults(self, **knobs: float | str | bool) -> None:
        await self.control("POST", "faults", knobs)

    async def requests(self, limit: int = 10) -> list[dict[str, Any]]:
        answer = await self.control("GET", f"requests?limit={limit}")
        requests: list[dict[str, Any]] = answer["requests"]
        return requests


def paylinks(
    *args: str, env: dict[str, str], input: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the `paylinks` command as a separate process, as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "paylinks", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """A worker whose log (stderr) is read from a pipe: for short runs that are read as they end."""
    return subprocess.Popen(
        [sys.executable, "-m", "paylinks", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def spawn_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A worker whose log goes to a file: a pipe nobody reads would fill up and stall a
    long-running worker (and so what a test measures), and a file keeps what a killed
    worker wrote."""
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "paylinks", "worker", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> str:
    """SIGTERM a worker started with `start_worker`; its log."""
    if worker.poll() is None:
        worker.terminate()
    try:
        _, stderr = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, stderr = worker.communicate(timeout=10)
    return stderr.decode()


def log_events(*logs: Path) -> list[dict[str, Any]]:
    """Every JSON log line of the given files; a line cut short by SIGKILL is skipped."""
    found = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def enqueue(path: Path, env: dict[str, str]) -> dict[str, Any]:
    done = paylinks("enqueue", str(path), "--json", env=env)
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def run_workers(env: dict[str, str], count: int = 2, *args: str) -> list[str]:
    """Burst workers until the queue is empty; returns each one's log (stderr)."""
    workers = [start_worker(env, "--burst", *args) for _ in range(count)]
    # Read every worker's pipe at once: a worker whose pipe is full stops logging, and so
    # stops working, until someone reads it.
    with ThreadPoolExecutor(count) as pool:
        outputs = list(pool.map(lambda worker: worker.communicate(timeout=180), workers))
    logs = []
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()[-2000:]
        logs.append(stderr.decode())
    return logs


def events(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


def results(batch: str, env: dict[str, str]) -> list[dict[str, Any]]:
    done = paylinks("results", batch, env=env)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.splitlines()]


def write_requests(path: Path, requests: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def example_requests(count: int) -> list[dict[str, Any]]:
    lines = CHECKOUTS.read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def unique_requests(count: int, prefix: str) -> list[dict[str, Any]]:
    """`count` valid requests: the examples, over and over, each with a token of its own."""
    lines = CHECKOUTS.read_text().splitlines()
    requests = []
    for i in range(count):
        request = json.loads(lines[i % len(lines)])
        request["checkoutToken"] = f"{prefix}-{i:05d}"
        requests.append(request)
    return requests


# Tokens whose requests the sandbox refuses (its reject_prefix knob), for the dashboard's tests.
REFUSED = [f"REFUSE-{i}" for i in range(3)]


@contextmanager
def dashboard(env: dict[str, str], *args: str) -> Iterator[str]:
    """A `paylinks dashboard` process on a free loopback port; its base url."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "paylinks", "dashboard", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def dead_letters(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """`paylinks dead-letters list --json`, parsed."""
    done = paylinks("dead-letters", "list", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.splitlines()]


# Whole batches through faults: waiting on a batch's counters, stopping workers, the end state.


async def batch_status(redis: Redis, batch: str) -> dict[str, Any] | None:
    """The batch's counters, as `paylinks status BATCH --json` prints them."""
    return await Batches(redis).status(batch)


Status = dict[str, Any]


@contextmanager
def cleaned_up(workers: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Whatever happens in the test, no worker it started outlives it."""
    try:
        yield
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


async def wait_for(
    redis: Redis,
    batch: str,
    reached: Callable[[Status], bool],
    what: str,
    within: float,
    workers: Sequence[tuple[subprocess.Popen[bytes], Path]] = (),
) -> Status:
    """Poll the batch's counters until `reached`, at most `within` seconds.

    A worker that exits while we wait fails the test at once, with the end of its log.
    """
    deadline = time.monotonic() + within
    status: Status | None = None
    while time.monotonic() < deadline:
        status = await batch_status(redis, batch)
        if status is not None and reached(status):
            return status
        for worker, log in workers:
            if worker.poll() is not None:
                pytest.fail(
                    f"a worker exited ({worker.returncode}) while waiting for {what}; "
                    f"batch status: {status}; its log ends with:\n{tail(log)}"
                )
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not reached in {within:.0f} s; batch status: {status}")


def stop_gracefully(
    workers: Sequence[tuple[subprocess.Popen[bytes], Path]], timeout: float
) -> None:
    """SIGTERM each worker; each must exit 0 within `timeout` seconds."""
    for worker, _ in workers:
        worker.send_signal(signal.SIGTERM)
    for worker, log in workers:
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"a worker did not exit within {timeout} s of SIGTERM:\n{tail(log)}")
        assert worker.returncode == 0, tail(log)


async def assert_no_dead_letters(redis: Redis, env: dict[str, str]) -> None:
    listed = paylinks("dead-letters", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout == b""
    assert await redis.zcard(layout.DEAD_LETTERS) == 0


def assert_all_created(status: Status | None, batch: str, total: int) -> None:
    """The batch is done and every one of its requests was created."""
    expected = {
        "batch": batch,
        "total": total,
        "queued": 0,
        "in_progress": 0,
        "retrying": 0,
        "created": total,
        "failed": 0,
        "done": True,
    }
    assert status is not None
    assert {name: status.get(name) for name in expected} == expected, status


def wait_for_exit(workers: Sequence[tuple[subprocess.Popen[bytes], Path]], timeout: float) -> None:
    """Burst workers: each must exit 0 within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for worker, log in workers:
        try:
            worker.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a burst worker still runs after {timeout} s:\n{tail(log)}")
        assert worker.returncode == 0, tail(log)
