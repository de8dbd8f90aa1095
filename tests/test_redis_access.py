"""Redis as production runs it: an ACL user's password, TLS with a client certificate, and
acknowledging an enqueue only once a replica holds it (WAIT). Real redis-server processes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from paylinks.devtools.ports import free_port
from paylinks.devtools.redis_server import RedisServer
from tests.helpers import (
    Sandbox,
    enqueue,
    paylinks,
    results,
    run_workers,
    unique_requests,
    write_requests,
)

ADMIN_PASSWORD = "admin-Pa55word-never-logged"
PASSWORD = "paylinks-Pa55word-never-logged"
# The README's ACL user (Operations: Redis), keys and commands: what paylinks and arq use.
ACL_USER = [
    "paylinks",
    "on",
    f">{PASSWORD}",
    "~paylinks:*",
    "~arq:*",
    "+@all",
    "-@dangerous",
    "+info",
]


def run_batch(env: dict[str, str], tmp_path: Path, total: int, prefix: str) -> list[str]:
    """Enqueue `total` requests and work them with a burst worker; the worker's log."""
    report = enqueue(
        write_requests(tmp_path / f"{prefix}.jsonl", unique_requests(total, prefix)), env
    )
    assert report["enqueued"] == total
    logs = run_workers(env, 1, "--concurrency", "10")
    rows = results(report["batch"], env)
    assert [r["state"] for r in rows] == ["created"] * total
    return logs


def one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    """The one line a refused command prints; it exits 2."""
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.count("\n") == 1, stderr
    return stderr.strip()


@pytest.fixture(scope="module")
def protected() -> Iterator[RedisServer]:
    """A redis-server whose default user has a password, and with paylinks' own ACL user."""
    with RedisServer(options=["--requirepass", ADMIN_PASSWORD]) as server:
        admin = subprocess.run(
            ["redis-cli", "-p", str(server.port), "--user", "default", "--pass", ADMIN_PASSWORD,
             "--no-auth-warning", "ACL", "SETUSER", *ACL_USER],
            capture_output=True,
        )  # fmt: skip
        assert admin.stdout.strip() == b"OK", admin
        yield server


async def test_an_acl_user_enqueues_and_works_a_batch_with_its_password(
    protected: RedisServer, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    url = f"redis://paylinks:{PASSWORD}@127.0.0.1:{protected.port}/0"
    renv = {**env, "REDIS_URL": url}
    logs = run_batch(renv, tmp_path, 30, "ACL")
    stats = await sandbox.stats()
    assert stats["sessions"] == 30
    assert stats["duplicate_tokens"] == 0
    # The user's password reached Redis, and no line of the worker's log.
    assert logs[0].strip()
    assert PASSWORD not in logs[0]


@pytest.mark.parametrize(
    "command",
    [("enqueue", "FILE"), ("worker", "--burst"), ("worker",), ("status", "some-batch")],
)
def test_a_wrong_password_is_one_line_without_it_and_exit_code_2(
    command: tuple[str, ...], protected: RedisServer, env: dict[str, str], tmp_path: Path
) -> None:
    wrong = "Wrong-Pa55word-never-shown"
    renv = {**env, "REDIS_URL": f"redis://paylinks:{wrong}@127.0.0.1:{protected.port}/0"}
    requests = write_requests(tmp_path / "w.jsonl", unique_requests(1, "WRONG"))
    args = [str(requests) if arg == "FILE" else arg for arg in command]
    # A long-running worker too: waiting would not make Redis take the password.
    line = one_line_error(paylinks(*args, env=renv, timeout=60))
    assert line.startswith(f"paylinks: Redis at 127.0.0.1:{protected.port} (REDIS_URL) refused")
    assert "WRONGPASS" in line or "invalid username-password pair" in line
    assert wrong not in line


def test_no_password_is_one_line_and_exit_code_2(
    protected: RedisServer, env: dict[str, str]
) -> None:
    renv = {**env, "REDIS_URL": protected.url}
    line = one_line_error(paylinks("batches", env=renv, timeout=60))
    assert "refused REDIS_URL's user and password" in line
    assert "Authentication required" in line


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server's certificate for 127.0.0.1, and a client's, as files."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("paylinks-worker")
    files = {
        "ca": folder / "ca.pem",
        "server_cert": folder / "server.pem",
        "server_key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
        "other_ca": folder / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))
    return files


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, Path]) -> Iterator[tuple[RedisServer, int]]:
    """A redis-server that speaks TLS on its own port and asks clients for a certificate
    (tls-auth-clients, on by default); its plain port only tells that it is ready."""
    tls_port = free_port()
    options = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls_files["server_cert"]),
        "--tls-key-file", str(tls_files["server_key"]),
        "--tls-ca-cert-file", str(tls_files["ca"]),
    ]  # fmt: skip
    with RedisServer(options=options) as server:
        yield server, tls_port


def tls_env(
    env: dict[str, str], port: int, files: dict[str, Path], **chosen: str
) -> dict[str, str]:
    settings = {
        "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
        "PAYLINKS_REDIS_CA_FILE": str(files["ca"]),
        "PAYLINKS_REDIS_CERT_FILE": str(files["client_cert"]),
        "PAYLINKS_REDIS_KEY_FILE": str(files["client_key"]),
    }
    return {**env, **settings, **chosen}


async def test_tls_with_a_client_certificate_enqueues_and_works_a_batch(
    tls_server: tuple[RedisServer, int],
    tls_files: dict[str, Path],
    sandbox: Sandbox,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    _, port = tls_server
    run_batch(tls_env(env, port, tls_files), tmp_path, 30, "TLS")
    stats = await sandbox.stats()
    assert stats["sessions"] == 30


def test_tls_refusals_are_one_line_and_exit_code_2(
    tls_server: tuple[RedisServer, int], tls_files: dict[str, Path], env: dict[str, str]
) -> None:
    _, port = tls_server
    untrusted = tls_env(env, port, tls_files, PAYLINKS_REDIS_CA_FILE=str(tls_files["other_ca"]))
    line = one_line_error(paylinks("batches", env=untrusted, timeout=60))
    assert line.startswith(f"paylinks: cannot reach Redis at 127.0.0.1:{port} (REDIS_URL)")
    assert "certificate verify failed" in line

    no_client_certificate = tls_env(env, port, tls_files)
    del no_client_certificate["PAYLINKS_REDIS_CERT_FILE"]
    del no_client_certificate["PAYLINKS_REDIS_KEY_FILE"]
    line = one_line_error(paylinks("batches", env=no_client_certificate, timeout=60))
    assert line.startswith(f"paylinks: cannot reach Redis at 127.0.0.1:{port} (REDIS_URL)")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"PAYLINKS_REDIS_CA_FILE": "CA"}, "REDIS_URL must be rediss://"),
        (
            {"REDIS_URL": "rediss://127.0.0.1:1/0", "PAYLINKS_REDIS_CERT_FILE": "CA"},
            "set both PAYLINKS_REDIS_CERT_FILE and PAYLINKS_REDIS_KEY_FILE",
        ),
        ({"PAYLINKS_REDIS_CA_FILE": "/no/such/file"}, "PAYLINKS_REDIS_CA_FILE: Path does not"),
        ({"PAYLINKS_REDIS_SENTINELS": "127.0.0.1"}, "'127.0.0.1' is not host:port"),
    ],
)
def test_redis_settings_that_do_not_fit_together_are_one_line(
    settings: dict[str, str], message: str, env: dict[str, str], tls_files: dict[str, Path]
) -> None:
    chosen = {name: str(tls_files["ca"]) if v == "CA" else v for name, v in settings.items()}
    line = one_line_error(paylinks("batches", env={**env, **chosen}, timeout=60))
    assert line.startswith("paylinks: configuration error:")
    assert message in line


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as primary:
        replica = RedisServer(options=["--replicaof", "127.0.0.1", str(primary.port)])
        with replica:
            yield primary, replica


def linked(primary: RedisServer) -> bool:
    info = subprocess.run(
        ["redis-cli", "-p", str(primary.port), "INFO", "replication"], capture_output=True
    ).stdout.decode()
    return "connected_slaves:1" in info and ",state=online," in info


def test_an_enqueue_is_acknowledged_only_once_a_replica_holds_it(
    primary_and_replica: tuple[RedisServer, RedisServer], env: dict[str, str], tmp_path: Path
) -> None:
    primary, replica = primary_and_replica
    deadline = time.monotonic() + 20
    while not linked(primary):
        assert time.monotonic() < deadline, "the replica did not link up"
        time.sleep(0.05)
    renv = {
        **env,
        "REDIS_URL": primary.url,
        "PAYLINKS_REDIS_MIN_REPLICAS": "1",
        "PAYLINKS_REDIS_REPLICAS_TIMEOUT": "0.5",
    }
    requests = write_requests(tmp_path / "a.jsonl", unique_requests(20, "ACK"))
    report = enqueue(requests, renv)
    # Acknowledged, and so on the replica: read there, not on the primary.
    done = paylinks("status", report["batch"], "--json", env={**env, "REDIS_URL": replica.url})
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["total"] == 20

    replica.kill()
    more = write_requests(tmp_path / "b.jsonl", unique_requests(5, "UNACK"))
    line = one_line_error(paylinks("enqueue", str(more), env=renv, timeout=60))
    assert line.startswith("paylinks: 0 of 1 replicas (PAYLINKS_REDIS_MIN_REPLICAS) confirmed")
    # Without the setting, the primary alone acknowledges.
    assert enqueue(more, {**renv, "PAYLINKS_REDIS_MIN_REPLICAS": "0"})["duplicates"] == 5
