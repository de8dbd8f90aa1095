"""The dashboard in a real browser (the system's Chromium, headless) against a real fleet."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import RecordField
from paylinks.jobs.records import result_fields
from tests.helpers import (
    REFUSED,
    ROOT,
    Sandbox,
    dashboard,
    enqueue,
    example_requests,
    run_workers,
    spawn_worker,
    unique_requests,
    write_requests,
)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "dashboard.png"
# Generous: the machine is shared, and these are deadlines, not expectations.
DEADLINE_S = 120

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="chromium not found: browser tests skipped (apt-get install -y chromium)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        await browser.close()


async def new_page(browser: Browser) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(DEADLINE_S * 1000)
    return page


async def percent(page: Page) -> float:
    return float(await page.locator("section.summary [data-field=percent]").inner_text())


async def test_a_running_batch_moves_on_the_page_without_a_reload_and_completes(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path, browser: Browser
) -> None:
    await sandbox.faults(latency_ms=150)
    requests = unique_requests(40, "LIVE")
    batch = enqueue(write_requests(tmp_path / "live.jsonl", requests), env)["batch"]
    with dashboard(env) as base:
        page = await new_page(browser)
        await page.goto(f"{base}/batches/{batch}")
        assert await percent(page) == 0.0
        # A mark that a reload would wipe out: the counts must move without one.
        await page.evaluate("window.notReloaded = true")
        worker = spawn_worker(env, tmp_path / "worker.log", "--concurrency", "2")
        try:
            seen = set()
            deadline = time.monotonic() + DEADLINE_S
            while not any(0 < p < 100 for p in seen) and time.monotonic() < deadline:
                if not await page.evaluate("window.notReloaded === true"):
                    break  # the batch completed (which reloads the page) before we looked
                seen.add(await percent(page))
                await page.wait_for_timeout(200)
            assert any(0 < p < 100 for p in seen), f"only saw {sorted(seen)}"

            # Once every request ended, the page shows the completion by itself.
            await page.locator("section.summary [data-field=when]", has_text="completed").wait_for()
            assert await percent(page) == 100.0
            assert await page.locator("section.summary [data-field=created]").inner_text() == "40"
        finally:
            worker.terminate()
            worker.wait(60)


async def test_a_failed_request_is_opened_and_its_dead_letter_retried_until_created(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path, browser: Browser
) -> None:
    requests = example_requests(12)
    for token, request in zip(REFUSED, requests, strict=False):
        request["checkoutToken"] = token
    await sandbox.faults(reject_prefix="REFUSE-")
    batch = enqueue(write_requests(tmp_path / "refused.jsonl", requests), env)["batch"]
    run_workers(env, 1)
    await sandbox.faults(reject_prefix="")

    with dashboard(env) as base:
        page = await new_page(browser)
        await page.goto(base)
        await page.get_by_role("link", name=batch).click()
        await page.get_by_role("heading", name="Failures by reason").wait_for()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)

        # From the failure group's examples to one failed request.
        await page.locator("table.failures").get_by_role("link", name="REFUSE-0").click()
        record = page.locator("dl.record")
        await record.get_by_text("invalidParam").wait_for()
        assert await page.locator("[data-field=state]").inner_text() == "failed"
        assert "400" in await record.inner_text()
        for customer in (requests[0]["customer"]["email"], requests[0]["customer"]["lastName"]):
            assert customer not in await page.content()

        await page.get_by_role("button", name="Retry it").click()
        await page.get_by_role("status").filter(has_text="Queued again: 1.").wait_for()
        assert await redis.zscore(layout.DEAD_LETTERS, layout.idempotency_key("REFUSE-0")) is None

        run_workers(env, 1)
        await page.reload()
        assert await page.locator("[data-field=state]").inner_text() == "created"
        result = await redis.get(layout.result_key(layout.idempotency_key("REFUSE-0")))
        session = result_fields(result)[RecordField.URL]
        await page.get_by_role("link", name=session).wait_for()
