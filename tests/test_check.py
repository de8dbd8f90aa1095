"""`paylinks check` against the sandbox: a line for each thing that works, and one line and a
non-zero exit for the first that does not. It creates nothing."""

from __future__ import annotations

from paylinks.devtools.ports import free_port
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Sandbox, paylinks


async def test_a_working_setup_is_reported_line_by_line(
    sandbox: Sandbox, env: dict[str, str]
) -> None:
    done = paylinks("check", env=env)
    assert done.returncode == 0, done.stderr.decode()
    host_port = env["REDIS_URL"].removeprefix("redis://").split("/")[0]
    assert done.stdout.decode().splitlines() == [
        "settings ok",
        f"redis at {host_port} ok",
        "token ok",
        "sessions listed: 0 (of 0)",
    ]
    stats = await sandbox.stats()
    assert (stats["calls"], stats["sessions"], stats["lists"]) == (0, 0, 1)


async def test_a_fetched_token_says_when_it_expires(sandbox: Sandbox, env: dict[str, str]) -> None:
    # Credentials only: the token comes from {base}/auth.
    fetched = {k: v for k, v in env.items() if k != "CONOMY_ACCESS_TOKEN"}
    fetched |= {"CONOMY_CLIENT_ID": CLIENT_ID, "CONOMY_CLIENT_SECRET": CLIENT_SECRET}
    done = paylinks("check", env=fetched)
    assert done.returncode == 0, done.stderr.decode()
    token_line = done.stdout.decode().splitlines()[2]
    assert token_line.startswith("token ok (expires in ")
    assert token_line.endswith(" s)")


async def test_a_wrong_api_key_is_one_line_and_exit_1(
    sandbox: Sandbox, env: dict[str, str]
) -> None:
    done = paylinks("check", env={**env, "CONOMY_API_KEY": "wrong"})
    assert done.returncode == 1
    [line] = done.stderr.decode().splitlines()
    assert line == (
        "paylinks: check: listing sessions: HTTP 403 forbiddenOperation (code 43): "
        "x-api-key header is missing or wrong"
    )
    assert "wrong" not in done.stdout.decode()


async def test_an_unreachable_redis_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    port = free_port()
    done = paylinks("check", env={**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("paylinks: ")
    assert f"127.0.0.1:{port}" in line
    assert done.stdout.decode().splitlines() == ["settings ok"]


async def test_missing_settings_are_one_line_and_exit_2(env: dict[str, str]) -> None:
    done = paylinks("check", env={k: v for k, v in env.items() if k != "CONOMY_API_KEY"})
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "paylinks: configuration error: CONOMY_API_KEY: not set"
    ]
