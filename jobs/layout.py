"""The Redis layout, written once: every key paylinks names, and the fields and states of what
they hold. The Lua scripts write the same names (a test checks them against this module);
change the stored layout only with a migration, as records outlive releases."""

import hashlib
import uuid
from enum import StrEnum
from typing import NamedTuple

from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)

# Fixed forever: changing it would give every checkoutToken a new idempotency key, and a token
# re-sent under a new key can create a second session.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c4d1e-2b1a-5b8e-9a55-70a9e1c0b7d3")

PREFIX = "paylinks"
QUEUE = f"{PREFIX}:queue"
# Batches by when they were opened (ms), for `paylinks batches`.
BATCHES = f"{PREFIX}:batches"
# One entry per completed batch, for producers to read (XREAD) as a completion signal.
COMPLETED_BATCHES = f"{PREFIX}:batches:completed"
# Requests that failed for good: idempotency keys scored by when they failed (ms).
DEAD_LETTERS = f"{PREFIX}:dead-letters"
# When a producer last waited for replicas (ms): the write that its WAIT counts from.
REPLICATED = f"{PREFIX}:replicated"


_NAMESPACE_BYTES = IDEMPOTENCY_NAMESPACE.bytes
_VARIANT = "89ab"  # RFC 4122 variant: the top two bits of octet 8 are 10


def idempotency_key(checkout_token: str) -> str:
    """The `Idempotency-Key` of a checkout token: UUID v5 of the token in our namespace.

    What `uuid.uuid5` gives (a test compares them), formatted from the SHA-1 digest directly:
    building the UUID object was a twentieth of a request's intake.
    """
    h = hashlib.sha1(_NAMESPACE_BYTES + checkout_token.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def checkout_key(key: str) -> str:
    """The hash that records one checkout request until it is created: its body, state,
    attempts and outcome. A created request's record becomes its `result_key`."""
    return f"{PREFIX}:checkout:{key}"


def result_key(key: str) -> str:
    """A created request's result: one string of `RESULT_FIELDS`, in place of its record."""
    return f"{PREFIX}:result:{key}"


def batch_key(batch: str) -> str:
    """The hash that counts a batch's requests by state."""
    return f"{PREFIX}:batch:{batch}"


def batch_members_key(batch: str) -> str:
    """The list of a batch's idempotency keys, in the order they were enqueued."""
    return f"{PREFIX}:batch:{batch}:keys"


def access_token_key(credential: str) -> str:
    """Where the fleet caches the bearer token of one API credential."""
    return f"{PREFIX}:auth:{credential}"


def access_token_lock_key(credential: str) -> str:
    """The lock one worker holds while it fetches that token for the fleet."""
    return f"{access_token_key(credential)}:lock"


class LimiterKeys(NamedTuple):
    """The keys of one credential's rate limit, in the order `ratelimit.lua` takes them."""

    pause: str
    tat: str
    leases: str
    wake: str
    adaptive: str
    slots: str


_LIMITER_PREFIX = f"{PREFIX}:ratelimit:"
# Every limiter key of every credential, for SCAN.
LIMITER_PATTERN = f"{_LIMITER_PREFIX}*"


def limiter_keys(credential: str) -> LimiterKeys:
    prefix = f"{_LIMITER_PREFIX}{credential}"
    return LimiterKeys(*(f"{prefix}:{name}" for name in LimiterKeys._fields))


def limiter_credential(key: str) -> str | None:
    """The credential a limiter key belongs to (`limiter_keys` backwards), or None."""
    if key.startswith(_LIMITER_PREFIX):
        credential, _, name = key[len(_LIMITER_PREFIX) :].rpartition(":")
        if credential and name in LimiterKeys._fields:
            return credential
    return None


# One per worker process: arq's health record (`<queue>:health-check`, a string of its job
# counts) written with PSETEX every health-check interval to live one second more, and
# deleted as the worker stops. arq's own per-queue key was overwritten by every worker.
_WORKER_HEALTH_PREFIX = f"{QUEUE}{health_check_key_suffix}:"
WORKER_HEALTH_PATTERN = f"{_WORKER_HEALTH_PREFIX}*"


def worker_health_key(host: str, pid: int) -> str:
    """The health record of the worker process `pid` on `host`."""
    return f"{_WORKER_HEALTH_PREFIX}{host}:{pid}"


# The workers started and not stopped: each one's health record key (`worker_health_key`),
# scored by when it started (ms, Redis' clock). A worker adds itself at startup and removes
# itself as it stops; a killed one's is pruned once its record is gone (`worker/registry.py`).
WORKERS = f"{PREFIX}:workers"
# The API credentials (`credential_id`) workers use, scored by when a worker last named it (ms):
# where the dashboard finds limiter state (`limiter_keys`) without walking the keyspace.
CREDENTIALS = f"{PREFIX}:credentials"


def worker_of_health_key(key: str) -> tuple[str, int] | None:
    """(host, pid) of a worker's health record (`worker_health_key` backwards), or None."""
    if key.startswith(_WORKER_HEALTH_PREFIX):
        host, _, pid = key[len(_WORKER_HEALTH_PREFIX) :].rpartition(":")
        if host and pid.isdigit():
            return host, int(pid)
    return None


def arq_job_key(key: str) -> str:
    """arq's own key for the job of one checkout request (its job id is the idempotency key)."""
    return job_key_prefix + key


def arq_in_progress_key(key: str) -> str:
    """arq's marker that a worker is running the job right now."""
    return in_progress_key_prefix + key


def arq_retry_key(key: str) -> str:
    """arq's count of the job's runs."""
    return retry_key_prefix + key


class State(StrEnum):
    """Where a checkout request stands: its record's `state`, and a counter of its batch."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    CREATED = "created"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (State.CREATED, State.FAILED)


class RecordField(StrEnum):
    """The fields of a checkout record (`checkout_key`)."""

    CHECKOUT_TOKEN = "checkout_token"
    BATCH = "batch"
    # The body to send, canonical JSON; kept until the request is created, then dropped for
    # its digest (what memory a result keeps is what reading it and conflicts need).
    REQUEST = "request"
    # SHA-1 (hex) of `request`, once the request is created: a token enqueued again with the
    # same body is a duplicate, with another body a conflict. Records created by the release
    # before results (`result_key`) keep it whole, in their hash.
    REQUEST_DIGEST = "request_digest"
    STATE = "state"
    ATTEMPTS = "attempts"
    ENQUEUED_AT = "enqueued_at"
    UPDATED_AT = "updated_at"
    SESSION_ID = "session_id"
    URL = "url"
    EXPIRES_AT = "expires_at"
    # Written by earlier releases, which nothing read: no longer kept.
    SESSION_STATUS = "session_status"
    HTTP_STATUS = "http_status"
    ERROR = "error"
    # The API's error `code` and `type` (what the provider asks clients to branch on) and its
    # `traceId` (what its support asks for), from the last answer that was an error.
    ERROR_CODE = "error_code"
    ERROR_TYPE = "error_type"
    TRACE_ID = "trace_id"
    # The start of the API's answer to a failed request, for its dead letter.
    RESPONSE = "response"
    # When (ms) the earliest attempt whose answer never came was sent: while it is set, the
    # session may exist, so the next attempt looks for it before posting again.
    SENT_AT = "sent_at"
    # Ids of the sessions found beyond the one kept, when the API holds more than one for
    # the checkoutToken: for a person to invalidate (comma separated).
    DUPLICATE_SESSIONS = "duplicate_sessions"


# What a created request keeps, in the order its result (`result_key`) holds them, joined by
# RESULT_SEPARATOR, trailing empty ones left out. One string and not a hash: a hash keeps
# about 80 bytes a field once a value (a session's url) is over hash-max-listpack-value.
# Its `updated_at` is in ms after its `enqueued_at` (fewer digits); its `request_digest` is
# the first DIGEST_LENGTH hex digits of the body's SHA-1: 80 bits, so a body sent again that
# differs passes for the same with odds of 2**-80.
RESULT_FIELDS = (
    RecordField.REQUEST_DIGEST,
    RecordField.BATCH,
    RecordField.CHECKOUT_TOKEN,
    RecordField.ATTEMPTS,
    RecordField.ENQUEUED_AT,
    RecordField.UPDATED_AT,
    RecordField.SESSION_ID,
    RecordField.URL,
    RecordField.EXPIRES_AT,
    RecordField.HTTP_STATUS,
    RecordField.ERROR,
    RecordField.DUPLICATE_SESSIONS,
)
# The ASCII unit separator: in no checkoutToken (`models.TOKEN_PATTERN`) nor batch id that
# paylinks makes; a value holding one (from the API, or a batch so named) has it replaced by a
# space.
RESULT_SEPARATOR = "\x1f"
DIGEST_LENGTH = 20


class BatchField(StrEnum):
    """The fields of a batch's hash (`batch_key`), besides a counter per `State`."""

    TOTAL = "total"
    # "1" once every request is enqueued: only then can the batch complete.
    SEALED = "sealed"
    CREATED_AT = "created_at"
    COMPLETED_AT = "completed_at"
    WEBHOOK_URL = "webhook_url"
    RATELIMIT_WAIT_MS = "ratelimit_wait_ms"


class CompletionField(StrEnum):
    """The fields of an entry of `COMPLETED_BATCHES`."""

    BATCH = "batch"
    TOTAL = "total"
    CREATED = "created"
    FAILED = "failed"
    COMPLETED_AT = "completed_at"


class AdaptiveField(StrEnum):
    """The fields of a rate limit's `adaptive` hash: the lowered rate, when it was last
    changed, and until when further 429s leave it alone (µs)."""

    RATE = "rate"
    AT = "at"
    HOLD = "hold"
