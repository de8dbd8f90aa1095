"""What each entry point loads: the runtime never the development tools, a producer never
the worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

LOADED = "import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"


def loaded_by(module: str) -> list[str]:
    """The modules a fresh interpreter holds after importing `module`."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    modules: list[str] = json.loads(done.stdout)
    return modules


@pytest.mark.parametrize("module", ["paylinks", "paylinks.worker.app", "paylinks.worker.tasks"])
def test_the_runtime_loads_no_development_tool(module: str) -> None:
    modules = loaded_by(module)
    assert module in modules
    assert [m for m in modules if m.startswith("paylinks.devtools")] == []


def test_a_producer_loads_nothing_of_the_worker() -> None:
    modules = loaded_by("paylinks")
    assert "paylinks.jobs.producer" in modules
    assert [m for m in modules if m.startswith("paylinks.worker")] == []


def test_the_cli_leaves_the_development_tools_to_their_commands() -> None:
    modules = loaded_by("paylinks.worker.cli")
    assert [m for m in modules if m.startswith("paylinks.devtools")] == []
    assert "aiohttp.web" not in modules
