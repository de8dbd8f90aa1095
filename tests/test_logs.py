"""The log processors: timestamps as structlog's own, secrets kept out."""

import time
from datetime import datetime

from structlog.processors import TimeStamper

from paylinks.jobs.logs import Redactor, Timestamp


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
