"""A fleet on one Redis: throughput, Redis CPU and Redis commands per request with 1, 2 and 4
worker processes draining the same queue, and from Redis' CPU per request, the rate at which
one Redis (one core) and not the workers becomes the limit.

Each process is `paylinks worker --burst --concurrency 100` with the fleet rate limiter on but
set to 100,000/s (one script call per job that never holds a call back), against the sandbox at
20 ms a call, on a queue filled before the timed phase: the same run as the throughput section's
(c), through its harness (`bench.throughput.Bench`). Fleet sizes take turns within a round, a
different one first each round; figures are medians over the rounds.

Redis CPU is `INFO cpu` (used_cpu_user + used_cpu_sys) before and after each run, over the
requests; commands are `INFO commandstats` deltas (those inside Lua scripts included). Redis
runs commands on one thread, so one core is its ceiling: 1 / (CPU seconds per request) is the
most requests per second it can serve. This machine has 2 cores for the workers, Redis and the
sandbox together, so 2 and 4 worker processes are CPU-bound on the machine and the rate stops
growing; Redis' CPU per request is what the ceiling is computed from, not the rate.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.services import Services
from bench.throughput import QUIET_WAIT_S, Bench, Run

FLEETS = (1, 2, 4)


async def measure(services: Services, count: int, rounds: int, quiet_s: float) -> dict[str, Any]:
    runs: dict[int, list[Run]] = {n: [] for n in FLEETS}
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-") as tmp:
        bench = Bench(services, count, Path(tmp), quiet_s)
        for turn in range(rounds):
            order = FLEETS[turn % len(FLEETS) :] + FLEETS[: turn % len(FLEETS)]
            for n in order:
                runs[n].append(await bench.paylinks(count, f"fleet{n}", processes=n))
    return summarize(runs, count, rounds)


def summarize(runs: dict[int, list[Run]], count: int, rounds: int) -> dict[str, Any]:
    median = statistics.median
    fleets: dict[str, Any] = {}
    for n, done in runs.items():
        rate = median([run.rate for run in done])
        redis_cpu = median([run.redis["cpu_s_per_1000"] for run in done]) / 1000
        fleets[str(n)] = {
            "requests_per_s": round(rate),
            "requests_per_s_each_round": [round(run.rate) for run in done],
            "worker_cpu_ms_per_request": round(
                median([r.usage.cpu for r in done]) / count * 1e3, 3
            ),
            "redis_cpu_ms_per_request": round(redis_cpu * 1e3, 4),
            "redis_cpu_ms_each_round": [run.redis["cpu_s_per_1000"] for run in done],
            "redis_cores_busy": round(redis_cpu * rate, 2),
            "redis_commands_per_request": median(
                [run.redis["commands_per_request"] for run in done]
            ),
            "redis_round_trips_per_request": median(
                [run.redis["round_trips_per_request"] for run in done]
            ),
            "top_commands_per_request": done[-1].redis["top_commands_per_request"],
            "other_tenants_cores_each_round": [round(run.others_cores, 2) for run in done],
        }
    # The fleet that costs Redis the most per request sets the ceiling: more processes race
    # more often for the same jobs. The CPU the workers spend for one Redis core holds across
    # machine loads (both inflate alike), where the rates do not.
    worst = max(fleets.values(), key=lambda f: f["redis_cpu_ms_per_request"])
    return {
        "requests": count,
        "rounds": rounds,
        "fleets": fleets,
        "redis_ceiling_requests_per_s": round(1e3 / worst["redis_cpu_ms_per_request"]),
        "worker_cores_per_redis_core": round(
            min(
                f["worker_cpu_ms_per_request"] / f["redis_cpu_ms_per_request"]
                for f in fleets.values()
            ),
            1,
        ),
    }


def rows(figures: dict[str, Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for n, f in figures["fleets"].items():
        note = (
            f"rounds {f['requests_per_s_each_round']}; Redis {f['redis_cpu_ms_per_request']} ms "
            f"CPU/request ({f['redis_cores_busy']} cores), {f['redis_commands_per_request']} "
            f"commands/request; worker {f['worker_cpu_ms_per_request']} ms CPU/request"
        )
        out.append([f"{n} worker process(es)", f"{f['requests_per_s']} req/s", note])
    out.append([
        "one Redis' ceiling",
        f"{figures['redis_ceiling_requests_per_s']} req/s",
        f"1 core / Redis CPU per request; the workers reach it at about "
        f"{figures['worker_cores_per_redis_core']} cores",
    ])  # fmt: skip
    return out


async def run(services: Services, quick: bool) -> dict[str, Any]:
    figures = await measure(
        services, 1_000 if quick else 10_000, 1 if quick else 3, QUIET_WAIT_S[quick]
    )
    return {"rows": rows(figures), "figures": figures}
