"""One rate limit for the whole fleet, seen from the API's side.

Four worker processes of very different concurrency (5, 20, 50, 100) share one limit of 50
calls/s with a burst of 5, against the sandbox at 20 ms a call. The sandbox notes when each
checkout POST arrives; from those times: the most calls in any one-second window [t, t + 1 s)
that starts at a call (the limit allows at most rate + burst = 55), and the mean rate,
(n - 1) / (last - first), which should be at least 95% of the limit.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

import orjson

from bench.data import write_jsonl
from bench.services import Services

ROOT = Path(__file__).resolve().parent.parent
RATE, BURST = 50, 5
CONCURRENCIES = (5, 20, 50, 100)
LATENCY_MS = 20
MIN_MEAN_SHARE = 0.97


def max_one_second_window(times: list[float]) -> int:
    """The most calls in any [t, t + 1 s], both ends included, that starts at a call; `times`
    sorted."""
    return max(bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def catch_up(times: list[float]) -> dict[str, float]:
    """How far calls caught up with calls ahead of them on the way to the sandbox, in seconds;
    `times` sorted.

    Every worker waits with calls ready, so the limiter hands out slots back to back: the first
    BURST at once, then one every 1 / RATE s. The k-th arrival belongs to about the k-th slot,
    and its lag is its arrival minus that slot's place in the schedule. A call that lags X s
    more than some later call had X s of spacing squeezed out on its way (waking up, the Redis
    round trips before the call, the HTTP request), and a squeeze of X s lets a one-second
    window hold about RATE * X calls more than the limiter gave out. A start-up ramp or a pause
    delays every later call alike, and squeezes nothing.
    """
    lags = [t - max(0, k - BURST + 1) / RATE for k, t in enumerate(times)]
    squeezed = []
    lowest = float("inf")
    for lag in reversed(lags):
        lowest = min(lowest, lag)
        squeezed.append(lag - lowest)
    squeezed.sort()
    return {
        "p50": squeezed[len(squeezed) // 2],
        "p99": squeezed[min(len(squeezed) - 1, int(0.99 * len(squeezed)))],
        "max": squeezed[-1],
    }


def enqueue(services: Services, path: Path, log: Path) -> dict[str, Any]:
    with open(log, "wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "paylinks", "enqueue", str(path), "--json"],
            env=services.env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"enqueue exited with {done.returncode}: {log.read_text()[-2000:]}")
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def spawn_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    # The log goes to a file: a pipe nobody reads while the worker runs would stall it.
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paylinks",
                "worker",
                "--burst",
                "--concurrency",
                str(concurrency),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def events(log: Path, name: str) -> int:
    needle = f'"event":"{name}"'.encode()
    return sum(1 for line in log.read_bytes().splitlines() if needle in line)


async def run(services: Services, quick: bool) -> dict[str, Any]:
    await services.fresh(latency_ms=LATENCY_MS)
    load_before = os.getloadavg()[0]
    total = 300 if quick else 1_500
    env = services.env(PAYLINKS_RATE_LIMIT=str(RATE), PAYLINKS_RATE_BURST=str(BURST))
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-ratelimit-") as folder:
        tmp = Path(folder)
        path = write_jsonl(tmp / "requests.jsonl", total, prefix="RATE")
        report = await asyncio.to_thread(enqueue, services, path, tmp / "enqueue.log")
        if (report["enqueued"], report["rejected"]) != (total, []):
            raise RuntimeError(f"enqueue: {str(report)[:500]}")

        logs = {c: tmp / f"worker-{c}.log" for c in CONCURRENCIES}
        workers = {c: spawn_worker(env, c, logs[c]) for c in CONCURRENCIES}
        # At the limit the batch takes total / RATE seconds; allow twice that and start-up.
        deadline = time.monotonic() + 2 * total / RATE + 30
        try:
            while any(w.poll() is None for w in workers.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("workers still running past the deadline")
                await asyncio.sleep(0.2)
        finally:
            for worker in workers.values():
                if worker.poll() is None:
                    worker.kill()
                worker.wait(10)
        for c, worker in workers.items():
            if worker.returncode != 0:
                tail = logs[c].read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker --concurrency {c} exited {worker.returncode}: {tail}")
        created = {c: events(logs[c], "checkout.created") for c in CONCURRENCIES}

    stats = await services.control("GET", "stats")
    times = sorted(stats["call_times"])
    if stats["sessions"] != total or stats["duplicate_tokens"] or sum(created.values()) != total:
        raise RuntimeError(
            f"{stats['sessions']} sessions, {stats['duplicate_tokens']} duplicate tokens, "
            f"{sum(created.values())} created of {total}"
        )
    window = max_one_second_window(times)
    squeeze = catch_up(times)
    load = os.getloadavg()[0]
    span = times[-1] - times[0]
    mean = (len(times) - 1) / span
    ceiling = RATE + BURST
    rows: list[list[Any]] = [
        [
            "largest one-second count",
            f"{window} calls",
            f"limit {RATE}/s, burst {BURST}: at most {ceiling} "
            f"({'held' if window <= ceiling else 'EXCEEDED'}); "
            f"4 workers, concurrency {'/'.join(map(str, CONCURRENCIES))}",
        ],
        [
            "mean rate",
            f"{mean:.1f}/s",
            f"limit {RATE}/s, {mean / RATE:.1%} of it (at least {MIN_MEAN_SHARE:.0%}: "
            f"{'met' if mean >= MIN_MEAN_SHARE * RATE else 'NOT met'}); "
            f"{len(times):,} calls over {span:.1f} s, sandbox at {LATENCY_MS} ms",
        ],
        [
            "spacing squeezed on the way to the sandbox",
            f"{squeeze['max'] * 1000:.0f} ms",
            f"most a call caught up with calls ahead of it (p50 {squeeze['p50'] * 1000:.0f} ms, "
            f"p99 {squeeze['p99'] * 1000:.0f} ms): X s lets a window hold ~{RATE}*X calls more "
            f"than the limiter gave out; load average {load_before:.1f} before, {load:.1f} "
            f"after, on {os.cpu_count()} CPUs",
        ],
        [
            "calls per worker",
            " / ".join(str(created[c]) for c in CONCURRENCIES),
            f"sessions created by concurrency {'/'.join(map(str, CONCURRENCIES))}",
        ],
    ]
    figures = {
        "requests": total,
        "limit_per_s": RATE,
        "burst": BURST,
        "max_one_second_count": window,
        "ceiling": ceiling,
        "mean_per_s": round(mean, 2),
        "mean_share_of_limit": round(mean / RATE, 4),
        "calls": len(times),
        "span_seconds": round(span, 2),
        "created_by_concurrency": {str(c): n for c, n in created.items()},
        "latency_ms": LATENCY_MS,
        "squeezed_ms": {k: round(v * 1000, 1) for k, v in squeeze.items()},
        "load_average": [round(load_before, 2), round(load, 2)],
    }
    return {"rows": rows, "figures": figures}
