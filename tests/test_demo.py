"""`paylinks demo` as a person runs it in a terminal, Ctrl-C included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil

from tests.helpers import ROOT

# The demo's workers get this long for calls in flight; the demo must be gone soon after.
GRACE = 5
STOPPED_WITHIN = GRACE + 25


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.2)


def test_ctrl_c_ends_the_demo_within_the_grace_and_without_a_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "PAYLINKS_SHUTDOWN_GRACE": str(GRACE),
        # Slow enough that the batch is still running when Ctrl-C comes.
        "PAYLINKS_RATE_LIMIT": "5",
    }
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        # Its own process group, as a shell gives a foreground job: Ctrl-C reaches the group.
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paylinks",
                "demo",
                "--file",
                str(ROOT / "examples" / "checkouts.jsonl"),
            ],
            env=env,
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
            start_new_session=True,
            # As a terminal starts it: Ctrl-C at its default, even where this test runs with
            # SIGINT ignored (a non-interactive shell's background job, as CI may start it).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    children: list[psutil.Process] = []
    try:
        wait_until(lambda: b"enqueued" in out.read_bytes(), 60, "batch enqueued")
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3  # redis-server, the sandbox, the workers
        started = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(STOPPED_WITHIN)
        took = time.monotonic() - started
    finally:
        if demo.poll() is None:
            # Its children run in sessions of their own: a demo that hung must not leave them.
            for process in [psutil.Process(demo.pid), *children]:
                with suppress(psutil.NoSuchProcess):
                    process.kill()
            demo.wait()
    assert "Traceback" not in err.read_text(), err.read_text()[-3000:]
    assert demo.returncode == 130, (demo.returncode, took)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
