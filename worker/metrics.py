"""The worker process's own figures for Prometheus, and the one-line hooks that count them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

if TYPE_CHECKING:  # the client counts its calls here
    from paylinks.worker.conomy import ApiAnswer

# A `_created` series beside every counter would double the series for nothing we alert on.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Outcomes, as the `outcome` label says them.
CREATED, RECONCILED, RETRIED, FAILED = "created", "reconciled", "retried", "failed"

CHECKOUTS = Counter(
    "paylinks_checkouts",
    "Attempts at checkout requests by how they ended: created, reconciled (the session an "
    "earlier attempt made, found by a look-up), retried (tried again later) or failed (for "
    "good); with the HTTP status that decided it, and why when no answer did.",
    ["outcome", "reason", "status"],
    registry=REGISTRY,
)
ENQUEUE_TO_CREATED = Histogram(
    "paylinks_enqueue_to_created_seconds",
    "Seconds from a checkout request's enqueueing to its session's creation (or its finding).",
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800),
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "paylinks_api_requests",
    "Calls to the Conomy API by operation and HTTP status (timeout or connection when none).",
    ["operation", "status"],
    registry=REGISTRY,
)
API_DURATION = Histogram(
    "paylinks_api_request_duration_seconds",
    "Seconds one call to the Conomy API took, sent to last byte (or to its failure).",
    ["operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
    registry=REGISTRY,
)
API_IN_FLIGHT = Gauge(
    "paylinks_api_requests_in_flight",
    "Calls to the Conomy API this worker has sent and not yet had an answer to.",
    registry=REGISTRY,
)
RATELIMIT_WAIT = Histogram(
    "paylinks_ratelimit_wait_seconds",
    "Seconds a call waited for its slot in the fleet's rate limit (and lease, under a cap).",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60),
    registry=REGISTRY,
)
RATELIMIT_DEFERRALS = Counter(
    "paylinks_ratelimit_deferrals",
    "Jobs put back on the queue because no rate-limit slot was free within PAYLINKS_RATE_MAX_WAIT.",
    registry=REGISTRY,
)
RATELIMIT_PAUSES = Counter(
    "paylinks_ratelimit_pauses",
    "Pauses of the whole fleet's rate limit this worker set after a 429.",
    registry=REGISTRY,
)
TOKEN_RENEWALS = Counter(
    "paylinks_token_renewals",
    "Bearer tokens asked of the token endpoint, by result (renewed or failed).",
    ["result"],
    registry=REGISTRY,
)
for _result in ("renewed", "failed"):
    TOKEN_RENEWALS.labels(_result)

# What a reason the job writes (worker/tasks.py) starts with, and the bounded word that the
# `reason` label says for it when no HTTP answer decided the outcome.
_REASONS = (
    ("timeout", "timeout"),
    ("connection to", "connection"),
    ("look-up", "lookup"),
    ("token endpoint", "auth"),
    ("authentication", "auth"),
    ("gave up after", "max_tries"),
    ("job deadline", "deadline"),
    ("redis", "redis"),
)


def reason_label(reason: str, answer: ApiAnswer | None) -> str:
    """`api` when the API's answer decided (its status says more); else what went wrong, as
    one of a few words: a reason's own text (an error message) is never a label."""
    if answer is not None:
        return "api"
    return next((word for start, word in _REASONS if reason.startswith(start)), "other")


def _status(answer: ApiAnswer | None) -> str:
    return str(answer.status) if answer is not None else ""


def created(enqueued_at_ms: int, status: int | None, outcome: str = CREATED) -> None:
    """A session created (`status` the API's) or found (`outcome` reconciled, no status)."""
    reason = "api" if status is not None else "lookup"
    CHECKOUTS.labels(outcome, reason, "" if status is None else str(status)).inc()
    if enqueued_at_ms:
        # Clocks of different hosts: a producer's ahead of this one would make it negative.
        ENQUEUE_TO_CREATED.observe(max(0.0, time.time() - enqueued_at_ms / 1000))


def retried(reason: str, answer: ApiAnswer | None = None) -> None:
    CHECKOUTS.labels(RETRIED, reason_label(reason, answer), _status(answer)).inc()


def failed(reason: str, answer: ApiAnswer | None = None) -> None:
    CHECKOUTS.labels(FAILED, reason_label(reason, answer), _status(answer)).inc()


@dataclass
class Call:
    """One call to the API as it goes: its status, once answered."""

    status: int | None = None


@contextmanager
def api_call(operation: str) -> Iterator[Call]:
    """Count a call in flight while it lasts, then its duration and its status."""
    call = Call()
    started = time.monotonic()
    API_IN_FLIGHT.inc()
    status = "error"
    try:
        yield call
        status = str(call.status)
    except TimeoutError:
        status = "timeout"
        raise
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    except aiohttp.ClientError:
        status = "connection"
        raise
    finally:
        API_IN_FLIGHT.dec()
        API_DURATION.labels(operation).observe(time.monotonic() - started)
        API_REQUESTS.labels(operation, status).inc()
