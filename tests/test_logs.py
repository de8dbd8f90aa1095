"""The log processors: timestamps as structlog's own, secrets kept out; and the producer,
used as a library, leaves logging to its host."""

import json
import subprocess
import sys
import time
from datetime import datetime

import pytest
from structlog.processors import TimeStamper

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.logs import Redactor, Timestamp
from tests.helpers import ROOT, example_requests

# A host application that sets up logging its own way (or, without "configured", not at all),
# then uses the producer: what its logging looks like after, as JSON on stdout.
HOST = """
import json, logging, sys
import structlog

events = []
def keep(logger, name, event):
    events.append(event["event"])
    raise structlog.DropEvent

handler = logging.NullHandler()
if sys.argv[1] == "configured":
    logging.getLogger().addHandler(handler)
    structlog.configure(processors=[keep], logger_factory=structlog.ReturnLoggerFactory())
before = structlog.get_config()

from paylinks import SyncProducer

with SyncProducer() as producer:
    report = producer.enqueue(json.load(sys.stdin))
print(json.dumps({
    "enqueued": report.enqueued,
    "structlog_configured": structlog.is_configured(),
    "structlog_untouched": structlog.get_config() == before,
    "root_handlers": len(logging.getLogger().handlers),
    "root_handler_kept": handler in logging.getLogger().handlers,
    "root_level": logging.getLogger().level,
    "events": events,
}))
"""


def test_timestamps_read_as_structlogs_iso_utc_and_keep_time() -> None:
    ours, theirs = Timestamp(), TimeStamper(fmt="iso", utc=True)
    stamps = []
    deadline = time.time() + 1.2  # across at least one change of second
    while time.time() < deadline:
        mine = ours(None, "info", {})["timestamp"]
        reference = theirs(None, "info", {})["timestamp"]
        assert len(mine) == len(reference) == len("2026-11-25T19:30:29.978449Z"), mine
        assert mine.endswith("Z")
        gap = datetime.fromisoformat(reference) - datetime.fromisoformat(mine)
        assert 0 <= gap.total_seconds() < 0.5, (mine, reference)
        stamps.append(mine)
        time.sleep(0.01)
    assert stamps == sorted(stamps)
    assert len({s[:19] for s in stamps}) >= 2


def test_the_redactor_blanks_sensitive_fields_emails_bearers_and_secrets() -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-token-value")
    event = redactor(
        None,
        "info",
        {
            "email": "ana@example.com",
            "error": "for ana@example.com with Bearer abc.def and s3cr3t-token-value",
            "personal_data": ["77889900"],
            "note": "document 77889900",
            "checkout_token": "INV-1",
        },
    )
    assert event["email"] == "[redacted]"
    assert "ana@example.com" not in event["error"]
    assert "abc.def" not in event["error"]
    assert "s3cr3t-token-value" not in event["error"]
    assert event["note"] == "document [redacted]"
    assert event["checkout_token"] == "INV-1"
    assert "personal_data" not in event


def test_without_known_secrets_emails_and_bearer_tokens_are_still_blanked() -> None:
    event = Redactor()(
        None,
        "info",
        {
            "error": "Bearer abc.def for ana@example.com",
            "header": "Authorization: BEARER ghi.jkl",
            "checkout_token": "INV-2",
        },
    )
    assert event == {
        "error": "Bearer [redacted] for [redacted]",
        "header": "Authorization: Bearer [redacted]",
        "checkout_token": "INV-2",
    }


def host_using_the_producer(how: str, redis_url: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", HOST, how],
        input=json.dumps(example_requests(2)),
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    host: dict[str, object] = json.loads(done.stdout)
    host["stderr"] = done.stderr
    return host


@pytest.mark.usefixtures("redis")
def test_the_producer_logs_through_its_hosts_configuration_and_changes_none(
    redis_server: RedisServer,
) -> None:
    host = host_using_the_producer("configured", redis_server.url)
    assert host["enqueued"] == 2
    assert host["structlog_untouched"] is True
    assert (host["root_handlers"], host["root_handler_kept"]) == (1, True)
    assert host["root_level"] == 30  # WARNING, Python's own default
    # The host's configuration filters nothing: the per-request events at DEBUG, the summary.
    assert host["events"] == ["checkout.enqueued", "checkout.enqueued", "batch.enqueued"]


@pytest.mark.usefixtures("redis")
def test_a_host_that_configures_no_logging_still_has_none_after_using_the_producer(
    redis_server: RedisServer,
) -> None:
    host = host_using_the_producer("as-is", redis_server.url)
    assert host["enqueued"] == 2
    assert host["structlog_configured"] is False
    assert host["structlog_untouched"] is True
    assert (host["root_handlers"], host["root_level"]) == (0, 30)
    # Its events at INFO still show, as JSON lines on stderr: stdout is the program's own.
    events = [json.loads(line) for line in str(host["stderr"]).splitlines()]
    assert [e["event"] for e in events] == ["batch.enqueued"]
