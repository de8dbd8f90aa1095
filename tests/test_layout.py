"""The Redis layout is written once, in `paylinks.jobs.layout`: the Lua scripts use its names
and no others, and what it names is what earlier releases stored."""

from __future__ import annotations

import re
from enum import StrEnum
from fnmatch import fnmatchcase
from importlib.resources import files

import pytest

from paylinks.dashboard import failures, requests
from paylinks.jobs import layout

SCRIPTS = {
    f"{package}/{script.name}": script.read_text()
    for package in ("paylinks.jobs", "paylinks.worker")
    for script in files(package).joinpath("lua").iterdir()
    if script.name.endswith(".lua")
}
# A quoted name in Lua: a field or a state, or a word the script exchanges with its caller.
# Commands and their options are upper case; numbers and '+inf' are not names.
NAME = re.compile(r"'([a-z_]+)'")
# Words of a script's calls and replies, never stored.
CALLS = {
    "paylinks.jobs/enqueue.lua": {"duplicate", "conflict"},
    "paylinks.worker/ratelimit.lua": {"acquire", "take", "release", "pause", "recover"},
}
# Scripts that store only arq's own keys (whose names come from arq's constants).
ARQ_ONLY = {"paylinks.worker/claim.lua"}
LAYOUT_NAMES = {
    name
    for kind in vars(layout).values()
    if isinstance(kind, type) and issubclass(kind, StrEnum) and kind is not StrEnum
    for name in kind
}


def test_every_script_is_checked() -> None:
    assert set(SCRIPTS) == {
        "paylinks.jobs/enqueue.lua",
        "paylinks.jobs/requeue.lua",
        "paylinks.jobs/complete.lua",
        "paylinks.worker/transition.lua",
        "paylinks.worker/ratelimit.lua",
        "paylinks.worker/claim.lua",
    }


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - ARQ_ONLY))
def test_a_script_names_only_fields_and_states_of_the_layout(script: str) -> None:
    text = "\n".join(line.split("--")[0] for line in SCRIPTS[script].splitlines())
    names = set(NAME.findall(text)) - CALLS.get(script, set())
    assert names, "a script that names nothing would make this test pass for nothing"
    assert sorted(names - LAYOUT_NAMES) == []


# A created request's result, as the scripts that write or read one lay it out.
RESULT_FIELDS = re.compile(r"local RESULT_FIELDS = \{([^}]*)\}")
RESULT_SEPARATOR = re.compile(r"local SEPARATOR(?:, DIGEST_LENGTH)? = '\\(\d+)'")
DIGEST_LENGTH = re.compile(r"DIGEST_LENGTH = '\\\d+', (\d+)")


@pytest.mark.parametrize(
    ("script", "digests"),
    # The script that writes a result cuts the digest; the one that reads it takes its length.
    [("paylinks.worker/transition.lua", [layout.DIGEST_LENGTH]), ("paylinks.jobs/enqueue.lua", [])],
)
def test_a_script_lays_a_result_out_as_the_layout_does(script: str, digests: list[int]) -> None:
    (fields,) = RESULT_FIELDS.findall(SCRIPTS[script])
    assert NAME.findall(fields) == list(layout.RESULT_FIELDS)
    (separator,) = RESULT_SEPARATOR.findall(SCRIPTS[script])
    assert chr(int(separator)) == layout.RESULT_SEPARATOR
    assert [int(n) for n in DIGEST_LENGTH.findall(SCRIPTS[script])] == digests


def test_key_names_are_those_earlier_releases_wrote() -> None:
    assert [layout.QUEUE, layout.BATCHES, layout.COMPLETED_BATCHES, layout.DEAD_LETTERS] == [
        "paylinks:queue",
        "paylinks:batches",
        "paylinks:batches:completed",
        "paylinks:dead-letters",
    ]
    assert layout.checkout_key("k") == "paylinks:checkout:k"
    assert layout.result_key("k") == "paylinks:result:k"
    assert layout.batch_key("b") == "paylinks:batch:b"
    assert layout.batch_members_key("b") == "paylinks:batch:b:keys"
    assert layout.access_token_key("c") == "paylinks:auth:c"
    assert layout.access_token_lock_key("c") == "paylinks:auth:c:lock"
    assert layout.arq_job_key("k") == "arq:job:k"
    assert layout.arq_in_progress_key("k") == "arq:in-progress:k"
    assert list(layout.limiter_keys("c")) == [
        f"paylinks:ratelimit:c:{name}"
        for name in ("pause", "tat", "leases", "wake", "adaptive", "slots")
    ]
    assert layout.worker_health_key("host-1", 42) == "paylinks:queue:health-check:host-1:42"
    assert [layout.WORKERS, layout.CREDENTIALS] == ["paylinks:workers", "paylinks:credentials"]


def test_a_scan_pattern_finds_its_keys_and_reads_them_back_and_nothing_else() -> None:
    for key in layout.limiter_keys("a:b"):
        assert fnmatchcase(key, layout.LIMITER_PATTERN)
        assert layout.limiter_credential(key) == "a:b"
    for other in ("paylinks:ratelimit:c:lock", "paylinks:ratelimit:tat", "paylinks:auth:c"):
        assert layout.limiter_credential(other) is None

    key = layout.worker_health_key("worker.example.com", 4242)
    assert fnmatchcase(key, layout.WORKER_HEALTH_PATTERN)
    assert layout.worker_of_health_key(key) == ("worker.example.com", 4242)
    # arq's own key, one per queue, is no worker's.
    arqs = "paylinks:queue:health-check"
    assert not fnmatchcase(arqs, layout.WORKER_HEALTH_PATTERN)
    assert layout.worker_of_health_key(arqs) is None
    assert layout.worker_of_health_key(f"{arqs}:host:not-a-pid") is None


# The dashboard's templates read these off what pages.py gives them: a request (`r.`) by its
# record's fields, a batch's counts (`b.counts.`) by the batch's.
TEMPLATES = files("paylinks.dashboard").joinpath("templates")
RECORD_READ = re.compile(r"\br\.([a-z_]+)")
COUNT_READ = re.compile(r"\bb\.counts\.([a-z_]+)")


def test_the_dashboard_reads_only_fields_of_the_layout() -> None:
    read = {*requests.ROW_FIELDS, *requests.SHOWN_FIELDS, *failures.LETTER_FIELDS}
    assert sorted(read - set(layout.RecordField)) == []

    for template, fields in (
        ("request.html", requests.SHOWN_FIELDS),
        ("batch.html", requests.ROW_FIELDS),
    ):
        names = set(RECORD_READ.findall(TEMPLATES.joinpath(template).read_text())) - {"key"}
        assert names, template
        assert sorted(names - set(fields)) == [], f"{template} shows a field it never reads"
    counts = {
        name
        for template in ("batch.html", "batches.html", "macros.html")
        for name in COUNT_READ.findall(TEMPLATES.joinpath(template).read_text())
    }
    assert counts
    assert sorted(counts - {layout.BatchField.TOTAL, *layout.State}) == []


def test_field_and_state_names_are_those_earlier_releases_wrote() -> None:
    # A field may be added; one renamed would leave every stored record unreadable.
    assert {
        "checkout_token", "batch", "request", "state", "attempts", "enqueued_at", "updated_at",
        "session_id", "url", "expires_at", "session_status", "http_status", "error", "response",
    } <= set(layout.RecordField)  # fmt: skip
    assert {
        "total",
        "sealed",
        "created_at",
        "completed_at",
        "webhook_url",
        "ratelimit_wait_ms",
    } <= (set(layout.BatchField))
    assert list(layout.State) == ["queued", "in_progress", "retrying", "created", "failed"]
    assert {"rate", "at", "hold"} <= set(layout.AdaptiveField)
