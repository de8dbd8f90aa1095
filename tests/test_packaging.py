"""What the distribution ships: one import package, `paylinks`, with its Lua scripts and
`py.typed`, a working console script, and no names that shadow a host application's."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from paylinks import __version__
from tests.helpers import ROOT

PIP = [sys.executable, "-m", "pip", "-q"]
HOST_APP = {
    "jobs/__init__.py": "WHO = 'the host application'\n",
    "worker.py": "WHO = 'the host application'\n",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("paylinks-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package_with_its_scripts_and_types(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"paylinks"}
    for shipped in (
        "paylinks/py.typed",
        "paylinks/jobs/lua/enqueue.lua",
        "paylinks/jobs/lua/complete.lua",
        "paylinks/jobs/lua/requeue.lua",
        "paylinks/worker/lua/ratelimit.lua",
        "paylinks/worker/lua/transition.lua",
        "paylinks/devtools/sandbox.py",
        "paylinks/devtools/sandbox_options.py",
        "paylinks/devtools/demo.py",
        "paylinks/devtools/redis_server.py",
        "paylinks/devtools/ports.py",
        "paylinks/examples/checkouts.jsonl",
    ):
        assert shipped in names
    demo_input = zipfile.ZipFile(wheel).read("paylinks/examples/checkouts.jsonl")
    assert demo_input == (ROOT / "examples" / "checkouts.jsonl").read_bytes()
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]


def test_a_host_with_its_own_jobs_and_worker_imports_paylinks(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    app = tmp_path / "app"
    for name, text in HOST_APP.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    code = (
        "import json, jobs, worker, paylinks\n"
        "from paylinks import CheckoutRequest, Producer, SyncProducer\n"
        "from paylinks.jobs.scripts import lua\n"
        "from paylinks.worker.cli import DEMO_INPUT\n"
        "script = lua('paylinks.jobs', 'enqueue')\n"
        "demo = DEMO_INPUT.read_text()\n"
        "print(json.dumps([jobs.WHO, worker.WHO, paylinks.__file__, script, demo]))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=app, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    host_jobs, host_worker, paylinks_file, script, demo = json.loads(done.stdout)
    assert host_jobs == host_worker == "the host application"
    assert paylinks_file == str(site / "paylinks" / "__init__.py")
    assert script == (ROOT / "jobs" / "lua" / "enqueue.lua").read_text()
    assert demo == (ROOT / "examples" / "checkouts.jsonl").read_text()

    command = subprocess.run(
        [str(site / "bin" / "paylinks"), "--version"], cwd=app, env=env, capture_output=True
    )
    assert command.returncode == 0, command.stderr
    assert command.stdout.decode() == f"paylinks {__version__}\n"
