"""The Redis layout is written once, in `paylinks.jobs.layout`: the Lua scripts use its names
and no others, and what it names is what earlier releases stored."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib.resources import files

import pytest

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
    "paylinks.worker/ratelimit.lua": {"acquire", "release", "pause", "recover"},
}
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
    }


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_script_names_only_fields_and_states_of_the_layout(script: str) -> None:
    text = "\n".join(line.split("--")[0] for line in SCRIPTS[script].splitlines())
    names = set(NAME.findall(text)) - CALLS.get(script, set())
    assert names, "a script that names nothing would make this test pass for nothing"
    assert sorted(names - LAYOUT_NAMES) == []


def test_key_names_are_those_earlier_releases_wrote() -> None:
    assert [layout.QUEUE, layout.BATCHES, layout.COMPLETED_BATCHES, layout.DEAD_LETTERS] == [
        "paylinks:queue",
        "paylinks:batches",
        "paylinks:batches:completed",
        "paylinks:dead-letters",
    ]
    assert layout.checkout_key("k") == "paylinks:checkout:k"
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
