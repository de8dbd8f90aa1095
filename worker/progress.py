"""A live progress bar for a batch on a terminal (rich): done of total, rate and ETA."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from paylinks.jobs.producer import Producer


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.0f}/s" if task.speed else "-/s")


async def watch(producer: Producer, batch: str, interval: float = 0.5) -> dict[str, Any]:
    """Show the batch filling until every request ended; return its final status."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("created {task.fields[created]}  retrying {task.fields[retrying]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), speed_estimate_period=10) as bar:
        task = bar.add_task(batch, total=None, created=0, retrying=0, failed=0)
        while True:
            status = await producer.status(batch)
            if status is None:
                raise LookupError(f"no batch {batch!r} (unknown or expired)")
            bar.update(
                task,
                total=status["total"],
                completed=status["created"] + status["failed"],
                created=status["created"],
                retrying=status["retrying"],
                failed=status["failed"],
            )
            if status["done"]:
                return status
            await asyncio.sleep(interval)
