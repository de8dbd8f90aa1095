"""Run every benchmark section in one process tree, print one table, write the figures as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.services import Services, running

# A section measures one question side by side and returns
# {"rows": [[what, figure, note], ...], "figures": {...}} for the table and the JSON file.
Section = Callable[[Services, bool], Awaitable[dict[str, Any]]]


def sections() -> dict[str, Section]:
    from bench import dashboard, fleet, intake, latency, ratelimit, replicas, throughput

    return {
        "intake": intake.run,
        "throughput": throughput.run,
        "latency": latency.run,
        "ratelimit": ratelimit.run,
        "dashboard": dashboard.run,
        "replicas": replicas.run,
        "fleet": fleet.run,
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows = [(name, *row) for name, result in results.items() for row in result["rows"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    for name, what, figure, note in rows:
        print(f"{name:<{widths[0]}}  {what:<{widths[1]}}  {figure!s:>{widths[2]}}  {note}")


async def main(quick: bool, only: list[str], output: Path) -> None:
    chosen = {name: run for name, run in sections().items() if not only or name in only}
    results: dict[str, dict[str, Any]] = {}
    with running() as services:
        for name, run in chosen.items():
            started = time.monotonic()
            results[name] = await run(services, quick)
            results[name]["seconds"] = round(time.monotonic() - started, 1)
    print_table(results)
    report = {
        "quick": quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sections": {name: r["figures"] | {"seconds": r["seconds"]} for name, r in results.items()},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", default=[], help="sections to run")
    parser.add_argument("--output", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.only, args.output))
