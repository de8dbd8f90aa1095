"""A batch's progress as people read it: percent done, rate and time to go."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from paylinks.jobs.layout import BatchField, State

# The rate is taken over this many recent seconds of the dashboard's own reads of a batch.
WINDOW_S = 30.0
# Batches whose recent reads are kept; the least recently read is forgotten first.
TRACKED = 256


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    rate: float | None
    eta_s: float | None

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


class RateTracker:
    """Requests ended per second, from successive reads of a batch's counters."""

    def __init__(self) -> None:
        self._samples: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()

    def progress(self, status: dict[str, Any], created_at_ms: int | None) -> Progress:
        total = status[BatchField.TOTAL]
        done = status[State.CREATED] + status[State.FAILED]
        if status["done"]:
            return Progress(total, done, None, None)
        rate = self._recent_rate(status["batch"], done)
        if rate is None and created_at_ms and done:
            # First look at this batch: its average since it was opened.
            elapsed = time.time() - created_at_ms / 1000
            rate = done / elapsed if elapsed > 0 else None
        eta = (total - done) / rate if rate else None
        return Progress(total, done, rate, eta)

    def _recent_rate(self, batch: str, done: int) -> float | None:
        now = time.monotonic()
        samples = self._samples.pop(batch, None) or deque()
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > WINDOW_S:
            samples.popleft()
        self._samples[batch] = samples
        if len(self._samples) > TRACKED:
            self._samples.popitem(last=False)
        (then, done_then) = samples[0]
        if now - then < 1.0:
            return None
        return (done - done_then) / (now - then)
