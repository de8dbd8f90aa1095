"""Intake: how fast a file of requests gets into Redis, at what memory, and what it leaves there.

Side by side, each in a fresh process on an emptied Redis, over the same JSON Lines file:
- paylinks: the real CLI, `python -m paylinks enqueue FILE --json`, with its log events going
  to a file (at the default level INFO, the batch's `batch.enqueued`: the per-request
  `checkout.enqueued` is at DEBUG);
- arq: a loop of arq's own `enqueue_job` (one awaited call per request, the body as the job's
  argument, `_job_id` its checkoutToken), which validates nothing and keeps no record.

Rates are over each process's whole wall time (start-up included, which only flatters arq);
peak RSS is each process's own, its VmHWM polled until it exits. The producer also runs on
two shorter files to show its memory stays flat as the file grows, and Redis's `used_memory`
before and after the largest paylinks intake gives the bytes one batch takes.

`python -m bench.intake profile [COUNT]` times the same intake in-process, then each step of
it unprofiled (cProfile inflates Python-heavy steps, validation most) with the time Redis
spends running the enqueue script, then prints cProfile's top costs, all in microseconds per
request; `python -m bench.intake arq FILE` is the arq contender's process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.children import reap
from bench.data import write_jsonl
from bench.services import Services

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 12


@dataclass(frozen=True)
class Run:
    """One contender's process: wall and CPU seconds, peak RSS (bytes) and what it printed."""

    seconds: float
    cpu_seconds: float
    peak_rss: int
    output: Any

    def rate(self, count: int) -> float:
        return count / self.seconds


def measured(command: list[str], env: dict[str, str], log: Path) -> Run:
    """Run `command` to its end; its wall time, and its own CPU time and peak RSS."""
    with open(log, "wb") as stderr, tempfile.TemporaryFile() as stdout:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=stdout, stderr=stderr)
        ended = reap(process.pid)
        process.returncode = ended.returncode
        stdout.seek(0)
        printed = stdout.read()
    if process.returncode != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{command[2:4]} exited with {process.returncode}: {tail}")
    peak = round(ended.peak_rss_mb * 2**20)
    return Run(ended.at - started, ended.cpu, peak, orjson.loads(printed) if printed else None)


def paylinks_enqueue(services: Services, path: Path, log: Path) -> Run:
    command = [sys.executable, "-m", "paylinks", "enqueue", str(path), "--json"]
    return measured(command, services.env(), log)


def arq_enqueue(services: Services, path: Path, log: Path) -> Run:
    command = [sys.executable, "-m", "bench.intake", "arq", str(path)]
    return measured(command, services.env(), log)


async def emptied(services: Services) -> None:
    from paylinks.jobs.connection import connect

    redis = connect(services.redis_url)
    await redis.flushall()
    await redis.aclose()


async def redis_memory(services: Services) -> dict[str, Any]:
    """used_memory, the key space's own overhead, and (once a batch is in) what each kind of
    key paylinks writes takes, from MEMORY USAGE over every field (SAMPLES 0)."""
    from paylinks.jobs import layout
    from paylinks.jobs.connection import connect

    redis = connect(services.redis_url)
    try:
        info = await redis.info("memory")
        stats = await redis.execute_command("MEMORY", "STATS")  # type: ignore[no-untyped-call]
        db = dict(zip(stats[::2], stats[1::2], strict=True)).get("db.0") or []
        db = dict(zip(db[::2], db[1::2], strict=True))
        found: dict[str, Any] = {
            "used_memory": int(info["used_memory"]),
            "keyspace": int(db.get("overhead.hashtable.main", 0))
            + int(db.get("overhead.hashtable.expires", 0)),
        }
        sample = await redis.zrange(layout.QUEUE, 0, 199)
        if sample:
            records = [await redis.memory_usage(layout.checkout_key(k), samples=0) for k in sample]
            jobs = [await redis.memory_usage(layout.arq_job_key(k), samples=0) for k in sample]
            members = [k async for k in redis.scan_iter(match=layout.batch_members_key("*"))]
            found["record"] = sum(records) / len(records)
            found["record_encoding"] = await redis.object(
                "encoding", layout.checkout_key(sample[0])
            )
            found["arq_job"] = sum(jobs) / len(jobs)
            found["queue"] = await redis.memory_usage(layout.QUEUE, samples=0)
            found["members"] = sum([await redis.memory_usage(m, samples=0) for m in members])
        return found
    finally:
        await redis.aclose()


async def run(services: Services, quick: bool) -> dict[str, Any]:
    await services.fresh()
    sizes = (2_500, 5_000, 10_000) if quick else (25_000, 50_000, 100_000)
    total = sizes[-1]
    # The machine is shared and noisy: the two contenders take turns, `rounds` times each, and
    # each one's best round counts.
    rounds = 3
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-intake-") as folder:
        tmp = Path(folder)
        # Generation is not timed. Each file its own prefix: tokens never repeat across files.
        files = {n: write_jsonl(tmp / f"requests-{n}.jsonl", n, prefix=f"B{n}") for n in sizes}
        file_bytes = files[total].stat().st_size
        empty = tmp / "empty.jsonl"
        empty.write_bytes(b"")

        # The fixed cost of the CLI: interpreter, imports, connecting, opening and sealing.
        startups = []
        for _ in range(3):
            await emptied(services)
            startups.append(
                await asyncio.to_thread(paylinks_enqueue, services, empty, tmp / "empty.log")
            )
        startup = min(r.seconds for r in startups)

        # The producer's memory as the file grows, each size in a fresh process.
        by_size: dict[int, Run] = {}
        for n in sizes[:-1]:
            await emptied(services)
            by_size[n] = await asyncio.to_thread(
                paylinks_enqueue, services, files[n], tmp / f"paylinks-{n}.log"
            )
            check_paylinks(by_size[n], n)

        # The contenders side by side on the largest file, each on an emptied Redis.
        ours: list[Run] = []
        theirs: list[Run] = []
        before = after = {}
        for turn in range(rounds):
            await emptied(services)
            if turn == 0:
                before = await redis_memory(services)
            a = await asyncio.to_thread(
                paylinks_enqueue, services, files[total], tmp / "paylinks.log"
            )
            check_paylinks(a, total)
            if turn == 0:
                after = await redis_memory(services)
            ours.append(a)
            await emptied(services)
            b = await asyncio.to_thread(arq_enqueue, services, files[total], tmp / "arq.log")
            if b.output["enqueued"] != total:
                raise RuntimeError(f"arq enqueued {b.output['enqueued']} of {total}")
            theirs.append(b)
        log_bytes = (tmp / "paylinks.log").stat().st_size
    await emptied(services)

    a = min(ours, key=lambda r: r.seconds)
    b = min(theirs, key=lambda r: r.seconds)
    by_size[total] = max(ours, key=lambda r: r.peak_rss)
    ratio = a.rate(total) / b.rate(total)
    # CPU time per request, each contender's best: less sensitive to a busy machine than wall.
    cpu_a = min(r.cpu_seconds for r in ours) / total * 1e6
    cpu_b = min(r.cpu_seconds for r in theirs) / total * 1e6
    cpu_ratio = cpu_b / cpu_a
    turns = [x.rate(total) / y.rate(total) for x, y in zip(ours, theirs, strict=True)]
    used = after["used_memory"] - before["used_memory"]
    per_request = used / total
    parts = {
        "record": after["record"],
        "arq_job": after["arq_job"],
        "queue": after["queue"] / total,
        "batch_list": after["members"] / total,
        "key_space": (after["keyspace"] - before["keyspace"]) / total,
    }
    rss = {n: round(r.peak_rss / 2**20, 1) for n, r in sorted(by_size.items())}
    walls = ", ".join(f"{r.seconds:.2f}" for r in ours)
    rows: list[list[Any]] = [
        [
            f"paylinks enqueue, {total:,} lines",
            f"{a.rate(total):,.0f} req/s",
            f"real CLI subprocess, best of {rounds} ({walls} s wall; start-up alone, an "
            f"empty file: {startup:.2f} s); "
            f"{cpu_a:.0f} us CPU/request; validates, writes records, and logs to a file "
            f"({log_bytes:,} bytes: per-request events are at DEBUG), all timed",
        ],
        [
            f"arq enqueue_job loop, {total:,} jobs",
            f"{b.rate(total):,.0f} req/s",
            f"subprocess, best of {rounds} ({', '.join(f'{r.seconds:.2f}' for r in theirs)} s "
            f"wall); {cpu_b:.0f} us CPU/request; one awaited call per "
            f"job; no validation, no record, no log",
        ],
        [
            "ratio paylinks / arq",
            f"{ratio:.1f}x",
            f"target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}; "
            f"turn by turn {', '.join(f'{t:.1f}x' for t in turns)}; CPU per request "
            f"{cpu_ratio:.1f}x (less sensitive to a busy machine)",
        ],
        [
            "producer peak RSS by file size",
            " / ".join(f"{mib} MiB" for mib in rss.values()),
            "at " + " / ".join(f"{n:,}" for n in rss) + f" lines (file {file_bytes / 2**20:.0f} "
            f"MiB at {total:,}); arq loop {b.peak_rss / 2**20:.1f} MiB",
        ],
        [
            f"Redis memory of one batch of {total:,}",
            f"{used / 2**20:.1f} MiB",
            f"used_memory after - before: {per_request:,.0f} B/request; MEMORY USAGE per "
            f"request: record {parts['record']:,.0f} B ({after['record_encoding']}), "
            f"arq job {parts['arq_job']:,.0f} B, queue {parts['queue']:,.0f} B, batch list "
            f"{parts['batch_list']:,.0f} B, key space {parts['key_space']:,.0f} B",
        ],
    ]
    figures = {
        "requests": total,
        "rounds": rounds,
        "paylinks_per_s": round(a.rate(total)),
        "paylinks_seconds": [round(r.seconds, 3) for r in ours],
        "paylinks_cpu_us_per_request": round(cpu_a, 1),
        "paylinks_startup_seconds": round(startup, 3),
        "paylinks_log_bytes": log_bytes,
        "arq_per_s": round(b.rate(total)),
        "arq_seconds": [round(r.seconds, 3) for r in theirs],
        "arq_cpu_us_per_request": round(cpu_b, 1),
        "ratio": round(ratio, 2),
        "ratio_by_turn": [round(t, 2) for t in turns],
        "cpu_ratio": round(cpu_ratio, 2),
        "target_ratio": TARGET_RATIO,
        "producer_peak_rss_mib": {str(n): mib for n, mib in rss.items()},
        "arq_peak_rss_mib": round(b.peak_rss / 2**20, 1),
        "file_bytes": file_bytes,
        "redis_used_memory_bytes": used,
        "redis_bytes_per_request": round(per_request),
        "redis_bytes_per_request_by_key": {k: round(v) for k, v in parts.items()},
        "redis_record_encoding": after["record_encoding"],
    }
    return {"rows": rows, "figures": figures}


def check_paylinks(run: Run, count: int) -> None:
    report = run.output
    if (report["enqueued"], report["duplicates"], report["rejected"]) != (count, 0, []):
        raise RuntimeError(f"paylinks enqueue of {count}: {str(report)[:500]}")


# The arq contender's process, and the profile of the paylinks intake.


async def arq_loop(path: Path) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    from paylinks.jobs.queue import JOB_FUNCTION

    pool = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    enqueued = 0
    try:
        with open(path, "rb") as lines:
            for line in lines:
                body = orjson.loads(line)
                job = await pool.enqueue_job(JOB_FUNCTION, body, _job_id=body["checkoutToken"])
                enqueued += job is not None
    finally:
        await pool.aclose()
    return {"enqueued": enqueued}


def steps(path: Path) -> dict[str, float]:
    """Microseconds per request of each step the producer takes per line, timed alone in a
    loop: reading the JSON, validating (the wire check, jobs/wire.py), the script's arguments,
    the per-request log event (at DEBUG, so a call that writes nothing)."""
    from paylinks.jobs import layout, wire
    from paylinks.jobs.intake import canonical
    from paylinks.jobs.logs import get_logger

    lines = path.read_bytes().splitlines()
    log = get_logger(batch="profile")
    took = dict.fromkeys(("read JSON", "validate", "script arguments", "log event"), 0.0)
    for line in lines:
        t0 = time.perf_counter()
        body = orjson.loads(line)
        t1 = time.perf_counter()
        if not wire.valid(body):
            raise ValueError(f"not a valid request: {line[:200]!r}")
        t2 = time.perf_counter()
        key = layout.idempotency_key(body["checkoutToken"])
        canonical(body)
        t3 = time.perf_counter()
        log.debug("checkout.enqueued", checkout_token=body["checkoutToken"], idempotency_key=key)
        t4 = time.perf_counter()
        for name, seconds in zip(took, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            took[name] += seconds
    return {name: seconds / len(lines) * 1e6 for name, seconds in took.items()}


def profile(count: int, top: int = 25) -> None:
    """The paylinks intake of `count` lines in this process under cProfile, on a private Redis;
    log events go to a temporary file, as the CLI's would to a redirected stderr."""
    import cProfile
    import gc
    import pstats

    from paylinks.devtools.redis_server import RedisServer
    from paylinks.jobs.intake import read_json_lines
    from paylinks.jobs.logs import configure
    from paylinks.jobs.producer import Producer

    async def intake(path: Path) -> int:
        async with Producer.connect() as producer:
            with open(path, "rb") as source:
                report = await producer.enqueue_numbered(read_json_lines(source))
        return report.enqueued

    with tempfile.TemporaryDirectory() as folder, RedisServer() as redis:
        os.environ["REDIS_URL"] = redis.url
        path = write_jsonl(Path(folder) / "requests.jsonl", count)
        log = open(Path(folder) / "intake.log", "wb")  # noqa: SIM115
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            configure()
            started = time.perf_counter()
            plain = asyncio.run(intake(path))
            seconds = time.perf_counter() - started
            # The first intake on this Redis: its scripts' time is the enqueue's, all but a few.
            in_redis = asyncio.run(_script_seconds(redis.url)) / count * 1e6
            each = steps(path)
            asyncio.run(_flush(redis.url))
            # cProfile does not see the garbage collector: its pauses are timed apart.
            pauses: list[float] = []
            gc.callbacks.append(lambda phase, _: pauses.append(time.perf_counter()))
            asyncio.run(_flush(redis.url))
            started = time.perf_counter()
            asyncio.run(intake(path))
            seconds_gc = time.perf_counter() - started
            gc.callbacks.clear()
            collector = sum(pauses[1::2]) - sum(pauses[0::2])
            asyncio.run(_flush(redis.url))
            profiler = cProfile.Profile()
            profiler.enable()
            asyncio.run(intake(path))  # an emptied Redis: every request enqueued again
            profiler.disable()
        finally:
            os.dup2(saved, 2)
            log.close()
    assert plain == count
    print(f"{count:,} requests in {seconds:.2f} s unprofiled: {seconds / count * 1e6:.1f} us each")
    print(
        f"again, timing the garbage collector: {seconds_gc / count * 1e6:.1f} us each, of which "
        f"{collector / count * 1e6:.1f} us in {len(pauses) // 2} collections"
    )
    print("\nunprofiled, us per request:")
    for name, us in [*each.items(), ("Redis running the enqueue script", in_redis)]:
        print(f"{us:9.1f}  {name}")
    stats = pstats.Stats(profiler)
    rows: list[tuple[float, float, int, str]] = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
        rows.append((cumtime, tottime, calls, where))
    for title, column in (("cumulative", 0), ("own time", 1)):
        print(f"\ntop {top} by {title}, us per request (cumulative / own / calls per request)")
        for cum, own, calls, where in sorted(rows, key=lambda r: -float(r[column]))[:top]:
            print(
                f"{cum / count * 1e6:9.1f} {own / count * 1e6:9.1f} {calls / count:8.2f}  {where}"
            )


async def _script_seconds(url: str) -> float:
    """Seconds Redis spent in EVALSHA so far (the commands the scripts ran included)."""
    from paylinks.jobs.connection import connect

    redis = connect(url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0)) / 1e6


async def _flush(url: str) -> None:
    from paylinks.jobs.connection import connect

    redis = connect(url)
    await redis.flushall()
    await redis.aclose()


if __name__ == "__main__":
    if sys.argv[1] == "arq":
        print(orjson.dumps(asyncio.run(arq_loop(Path(sys.argv[2])))).decode())
    elif sys.argv[1] == "profile":
        profile(int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
    else:
        raise SystemExit("usage: python -m bench.intake arq FILE | profile [COUNT]")
