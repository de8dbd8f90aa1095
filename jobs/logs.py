"""Structured JSON log events (structlog), with secrets and personal data kept out of them."""

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Fields that may carry a secret or personal data; their values are never written.
SENSITIVE_FIELDS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api_key",
        "access_token",
        "client_secret",
        "email",
        "phone",
        "phonenumber",
        "phone_number",
        "documentnumber",
        "document_number",
        "customer",
        "request",
        "body",
    }
)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
BEARER = re.compile(r"(?i)bearer\s+\S+")
# A secret this short would blank common words all over the log; such a value is refused.
SHORTEST_SECRET = 8
REDACTED = "[redacted]"


def _bearer(text: str) -> bool:
    """Whether `text` may hold a bearer token, in any case, before a regex looks for it."""
    return "earer" in text.lower()


class Redactor:
    """A structlog processor that blanks sensitive fields, emails and known secret values."""

    def __init__(self) -> None:
        self.secrets: list[str] = []

    def add(self, secret: str) -> None:
        if len(secret) >= SHORTEST_SECRET and secret not in self.secrets:
            self.secrets.append(secret)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        secrets = [*self.secrets, *event.pop("personal_data", ())]
        for name, value in event.items():  # values replaced in place: the keys stay the same
            if name.lower() in SENSITIVE_FIELDS:
                event[name] = REDACTED
            # Without a known secret only an email or a bearer token can need scrubbing: most
            # values are let through on two substring tests, a third of this processor's cost.
            elif isinstance(value, str) and (secrets or "@" in value or _bearer(value)):
                event[name] = _scrub(value, secrets)
        return event


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    if _bearer(text):
        text = BEARER.sub(f"Bearer {REDACTED}", text)
    # Most values hold no "@": skipping the regex for them halves the cost of a log line.
    return EMAIL.sub(REDACTED, text) if "@" in text else text


class Timestamp:
    """A structlog processor that stamps events in UTC ISO 8601 with microseconds, as
    structlog's TimeStamper(fmt="iso", utc=True) does, formatting the date and time once a
    second: TimeStamper builds a datetime per event, a sixth of the cost of intake's log line.
    """

    def __init__(self) -> None:
        # One tuple, swapped whole: a thread reading it never pairs a second with another's
        # prefix.
        self.second: tuple[int, str] = (-1, "")

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        now = time.time()
        second, prefix = self.second
        if int(now) != second:
            second = int(now)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = (second, prefix)
        event["timestamp"] = f"{prefix}.{int((now - second) * 1e6):06d}Z"
        return event


_redactor = Redactor()


def _processors() -> list[Processor]:
    """What every event goes through before it is rendered: level, time, redaction."""
    return [
        structlog.processors.add_log_level,
        Timestamp(),
        structlog.processors.format_exc_info,
        _redactor,
    ]


def configure(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """JSON lines on stderr, so that stdout stays free for the CLI's own output.

    For paylinks' own processes (the CLI, the worker), never called by the library: a program
    that uses the producer keeps its own logging setup. Libraries' stdlib logging (arq's) goes
    through the same redaction and renderer, and arq's per-job lines, which repeat our own
    events, are kept to warnings.
    """
    for secret in secrets:
        _redactor.add(secret)
    shared = _processors()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def redact(secret: str) -> None:
    """Keep a secret learnt at run time (a fetched bearer token) out of every log line."""
    _redactor.add(secret)


def get_logger(**context: Any) -> Any:
    """paylinks' logger, as the application configured structlog; a library never configures
    it for its host (structlog's own advice): the CLI and the worker call `configure`."""
    if not structlog.is_configured():
        # structlog's defaults would print to the program's stdout: a logger of our own, that
        # changes nothing global, writes JSON lines to stderr instead.
        return structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[*_processors(), structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        ).bind(**context)
    # Bound now, not a lazy proxy: a proxy binds its logger again on every call (a tenth of
    # a log event's cost, and intake logs one per request).
    return structlog.get_logger("paylinks").bind(**context)
