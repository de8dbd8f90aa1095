"""Which failures are retried, and the backoff between attempts."""

from datetime import UTC, datetime

import pytest

from paylinks.worker.retries import Verdict, backoff, is_retryable, retry_after_seconds, verdict


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert is_retryable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_final(status: int) -> None:
    assert not is_retryable(status)


def test_retry_after_in_seconds() -> None:
    assert retry_after_seconds("7") == 7.0


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 25 Nov 2026 12:00:30 GMT", now) == 30.0


@pytest.mark.parametrize("value", [None, "", "soon"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert retry_after_seconds(value) is None


def test_backoff_grows_within_its_window_and_stops_at_the_cap() -> None:
    for attempt, window in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        delays = [backoff(attempt, base=1.0, cap=30.0) for _ in range(200)]
        assert all(0 <= d <= window for d in delays)
        # Full jitter: the delays spread over the window rather than sitting at its edge.
        assert min(delays) < window / 4
        assert max(delays) > window * 3 / 4


def test_backoff_never_comes_back_before_retry_after() -> None:
    assert all(backoff(1, base=0.1, cap=1.0, retry_after=5.0) == 5.0 for _ in range(50))


@pytest.mark.parametrize(
    ("status", "code", "type_", "expected"),
    [
        (429, "32", "tooManyRequests", Verdict.THROTTLED),
        (429, None, None, Verdict.THROTTLED),
        (400, "32", None, Verdict.THROTTLED),
        (501, "42", "unimplemented", Verdict.PERMANENT),
        (500, None, "unimplemented", Verdict.PERMANENT),
        (501, None, None, Verdict.PERMANENT),
        (500, "01", "serverError", Verdict.RETRY),
        (500, "2", None, Verdict.RETRY),
        (503, None, None, Verdict.RETRY),
        (409, "13", "alreadyExist", Verdict.EXISTS),
        (409, None, None, Verdict.EXISTS),
        (400, "11", "invalidParam", Verdict.PERMANENT),
        (404, "31", "notFound", Verdict.PERMANENT),
    ],
)
def test_the_verdict_follows_the_code_and_type(
    status: int, code: str | None, type_: str | None, expected: Verdict
) -> None:
    assert verdict(status, code, type_) == expected
