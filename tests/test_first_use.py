"""What a new user trips on (issue 10): each command's errors, exit codes, logs and help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from paylinks.devtools.ports import free_port
from tests.helpers import EXAMPLES, ROOT, paylinks, start_worker

CHECKOUTS = EXAMPLES / "checkouts.jsonl"
BAD = EXAMPLES / "bad-checkouts.jsonl"
# Well under the ~34 s a command used to spend retrying a Redis that was never there.
FAIL_FAST = 20


def requests_file(tmp_path: Path, count: int, name: str = "some.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(CHECKOUTS.read_text().splitlines(keepends=True)[:count]))
    return path


def report_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    return lines[0]


def log_events(stderr: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def into_a_closed_pipe(command: list[str], env: dict[str, str]) -> bytes:
    """A command's stderr when its reader went away before it wrote, as `| head -0` does."""
    reader = subprocess.Popen(
        [sys.executable, "-m", "paylinks", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert reader.stdout is not None
    reader.stdout.close()
    _, stderr = reader.communicate(timeout=60)
    return stderr


def run_arq(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """arq's own command, as its documentation runs a worker."""
    arq = Path(sys.executable).parent / "arq"
    return subprocess.run([str(arq), *args], env=env, capture_output=True, timeout=120, cwd=cwd)


def batch_ids(env: dict[str, str]) -> list[str]:
    done = paylinks("batches", "--json", env=env)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line)["batch"] for line in done.stdout.splitlines()]


async def test_strict_reading_a_pipe_enqueues_nothing_when_a_line_is_bad(
    redis: Redis, env: dict[str, str]
) -> None:
    done = paylinks("enqueue", "-", "--strict", "--json", env=env, input=BAD.read_bytes())
    assert done.returncode == 1
    report = report_of(done)
    assert report["enqueued"] == 0
    assert report["rejected"]
    assert await redis.zcard("paylinks:queue") == 0


async def test_an_unreachable_redis_is_one_line_naming_redis_url(
    redis: Redis, env: dict[str, str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    away = {**env, "REDIS_URL": f"redis://{address}/0"}
    for command in (["enqueue", str(CHECKOUTS)], ["status", "some-batch"], ["worker", "--burst"]):
        done = paylinks(*command, env=away, timeout=FAIL_FAST)
        assert done.returncode == 2, (command, done.stderr.decode())
        line = one_line(done.stderr)
        assert "REDIS_URL" in line
        assert address in line


def test_an_unset_redis_url_is_one_line_naming_it(env: dict[str, str]) -> None:
    unset = {name: value for name, value in env.items() if name != "REDIS_URL"}
    for command in (["status", "some-batch"], ["worker", "--burst"]):
        done = paylinks(*command, env=unset, timeout=FAIL_FAST)
        assert done.returncode == 2, done.stderr.decode()
        assert "REDIS_URL" in one_line(done.stderr)


async def test_results_into_a_closed_pipe_end_without_a_traceback(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    paylinks("enqueue", str(requests_file(tmp_path, 5)), "--batch", "piped", env=env)
    for command in (["results", "piped"], ["batches", "--json"]):
        stderr = into_a_closed_pipe(command, env)
        assert b"Traceback" not in stderr, stderr.decode()
        assert b"BrokenPipe" not in stderr, stderr.decode()


async def test_input_errors_are_one_line_naming_the_file(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    done = paylinks("enqueue", str(missing), env=env)
    assert (done.returncode, str(missing) in one_line(done.stderr)) == (2, True)

    template = tmp_path / "template.json"
    template.write_text('{"checkoutToken": "{invoice}",')
    done = paylinks("enqueue", str(EXAMPLES / "invoices.csv"), "--template", str(template), env=env)
    assert (done.returncode, str(template) in one_line(done.stderr)) == (2, True)

    done = paylinks("enqueue", str(EXAMPLES / "invoices.csv"), env=env)
    assert (done.returncode, "--template" in one_line(done.stderr)) == (2, True)

    template.write_text(
        (EXAMPLES / "invoices-template.json").read_text().replace("{vat}", "{tax_amount}")
    )
    done = paylinks("enqueue", str(EXAMPLES / "invoices.csv"), "--template", str(template), env=env)
    assert done.returncode == 2
    assert "tax_amount" in one_line(done.stderr)
    assert batch_ids(env) == []


async def test_unknown_batches_and_tokens_exit_non_zero_and_purging_all_needs_all(
    redis: Redis, env: dict[str, str]
) -> None:
    done = paylinks("results", "no-such-batch", env=env)
    assert (done.returncode, done.stdout) == (1, b"")
    assert "no-such-batch" in one_line(done.stderr)

    assert paylinks("dead-letters", "retry", "--token", "NOPE", env=env).returncode == 1

    assert paylinks("dead-letters", "purge", env=env).returncode == 2
    assert paylinks("dead-letters", "purge", "--all", "--batch", "b", env=env).returncode == 2
    done = paylinks("dead-letters", "purge", "--all", env=env)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"purged": 0})


async def test_enqueuing_a_file_again_points_at_its_batch_and_opens_none(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    path = requests_file(tmp_path, 3)
    first = report_of(paylinks("enqueue", str(path), "--json", env=env))
    assert first["enqueued"] == 3

    again = paylinks("enqueue", str(path), "--json", env=env)
    assert again.returncode == 0, again.stderr.decode()
    report = report_of(again)
    assert (report["batch"], report["enqueued"], report["duplicates"]) == (None, 0, 3)
    assert report["duplicate_batches"] == {first["batch"]: 3}
    plain = paylinks("enqueue", str(path), env=env)
    assert plain.stdout.decode().strip() == first["batch"]
    assert first["batch"] in plain.stderr.decode()

    rejected_only = tmp_path / "bad.jsonl"
    rejected_only.write_text('{"checkoutToken": "X"}\nnot json\n')
    assert paylinks("enqueue", str(rejected_only), env=env).returncode == 1
    assert batch_ids(env) == [first["batch"]]

    # --wait on a run that enqueued nothing waits for the requests where they are.
    worker = start_worker(env, "--burst")
    _, log = worker.communicate(timeout=120)
    assert worker.returncode == 0, log.decode()
    waited = paylinks("enqueue", str(path), "--wait", env=env)
    assert waited.returncode == 0, waited.stderr.decode()
    assert first["batch"] in waited.stderr.decode()


async def test_batch_completed_is_logged_after_its_last_checkout(
    redis: Redis, env: dict[str, str], sandbox: object, tmp_path: Path
) -> None:
    paylinks("enqueue", str(requests_file(tmp_path, 3)), "--batch", "ordered", env=env)
    worker = start_worker(env, "--burst", "--concurrency", "1")
    _, log = worker.communicate(timeout=120)
    assert worker.returncode == 0, log.decode()
    names = [e["event"] for e in log_events(log)]
    last_created = max(i for i, name in enumerate(names) if name == "checkout.created")
    assert names.index("batch.completed") > last_created, names


async def test_the_log_level_is_honoured_and_enqueue_logs_one_line_a_batch(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    path = requests_file(tmp_path, 20)
    done = paylinks("enqueue", str(path), env=env)
    assert done.returncode == 0
    assert [e["event"] for e in log_events(done.stderr)] == ["batch.enqueued"]

    quiet = {**env, "PAYLINKS_LOG_LEVEL": "WARNING"}
    for command in (["enqueue", str(path)], ["worker", "--burst"], ["status", "x"]):
        done = paylinks(*command, env=quiet)
        assert log_events(done.stderr) == [], (command, done.stderr.decode())

    done = paylinks("status", "x", env={**env, "PAYLINKS_LOG_LEVEL": "LOUD"})
    assert done.returncode == 2
    assert "PAYLINKS_LOG_LEVEL" in one_line(done.stderr)


async def test_an_unreachable_api_is_named_in_the_failure(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    away = {**env, "CONOMY_BASE_URL": f"http://{address}/sandbox", "PAYLINKS_MAX_TRIES": "2"}
    paylinks("enqueue", str(requests_file(tmp_path, 1)), "--batch", "no-api", env=away)
    worker = start_worker(away, "--burst")
    _, log = worker.communicate(timeout=120)
    assert worker.returncode == 0, log.decode()
    (row,) = [
        json.loads(line) for line in paylinks("results", "no-api", env=away).stdout.splitlines()
    ]
    assert row["state"] == "failed"
    assert address in row["error"]


async def test_arqs_own_cli_runs_a_paylinks_worker(
    redis: Redis, env: dict[str, str], sandbox: object, tmp_path: Path
) -> None:
    paylinks("enqueue", str(requests_file(tmp_path, 2)), "--batch", "by-arq", env=env)
    done = run_arq(env, tmp_path, "paylinks.worker.app.WorkerSettings", "--burst")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    status = json.loads(paylinks("status", "by-arq", "--json", env=env).stdout)
    assert (status["created"], status["done"]) == (2, True)


def test_each_commands_help_lists_the_settings_it_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    every_setting = set(re.findall(r"^\| `([A-Z_]+)` \|", configuration, re.MULTILINE))
    assert {"REDIS_URL", "CONOMY_API_KEY", "PAYLINKS_LOG_LEVEL"} <= every_setting

    # The dashboard's own settings are named by its --help, not the worker's.
    dashboard_only = {"PAYLINKS_DASHBOARD_TOKEN", "PAYLINKS_HEALTH_CHECK_INTERVAL"}
    dashboard = paylinks("dashboard", "--help", env={}).stdout.decode()
    assert dashboard_only <= set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", dashboard))
    worker = paylinks("worker", "--help", env={}).stdout.decode()
    assert every_setting - dashboard_only <= set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", worker))
    for command in (["enqueue"], ["status"], ["results"], ["dead-letters", "list"]):
        text = paylinks(*command, "--help", env={}).stdout.decode()
        assert {"REDIS_URL", "PAYLINKS_RESULT_TTL", "PAYLINKS_LOG_LEVEL"} <= set(text.split())
        assert "CONOMY_API_KEY" not in text
