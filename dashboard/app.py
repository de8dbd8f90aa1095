"""The dashboard's web application, and serving it from the `paylinks dashboard` command."""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from redis.asyncio import Redis

from paylinks.dashboard.fleet import FleetReader
from paylinks.dashboard.pages import Pages
from paylinks.dashboard.security import HEADERS, Guard, is_loopback
from paylinks.jobs.connection import connect
from paylinks.worker.config import WorkerConfig
from paylinks.worker.health import HealthConfig

STATIC = Path(__file__).resolve().parent / "static"
EXIT_CONFIG = 2


class DashboardConfig(WorkerConfig, HealthConfig):
    """The fleet's settings (Redis, rate limit, the workers' health-check interval) and the
    dashboard's own token."""

    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    dashboard_token: SecretStr | None = Field(None, min_length=16)


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)


def build(redis: Redis, config: DashboardConfig, *, read_only: bool) -> web.Application:
    token = config.dashboard_token.get_secret_value() if config.dashboard_token else None
    guard = Guard(token, read_only)
    pages = Pages(redis, config, guard, FleetReader(redis, config, config.health_check_interval))
    guard.login_page = pages.login
    app = web.Application(middlewares=[guard.middleware])
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", pages.batch_list)
    app.router.add_get("/batches/{batch}", pages.batch)
    app.router.add_get("/batches/{batch}/results.csv", pages.results_csv)
    app.router.add_get("/api/batches", pages.batch_status)
    app.router.add_get("/requests/{key}", pages.request_page)
    app.router.add_get("/search", pages.search)
    app.router.add_get("/dead-letters", pages.letters)
    app.router.add_get("/fleet", pages.fleet_page)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", pages.sign_in)
    if not read_only:
        app.router.add_post("/dead-letters/retry", pages.retry)
        app.router.add_post("/dead-letters/purge", pages.purge)
    app.router.add_static("/static", STATIC)

    async def close_redis(_: web.Application) -> None:
        await redis.aclose()

    app.on_cleanup.append(close_redis)
    return app


def serve(config: DashboardConfig, host: str, port: int, *, read_only: bool) -> int:
    """Serve until interrupted; refuse to listen beyond this host without a token."""
    if not is_loopback(host) and config.dashboard_token is None:
        print(
            f"paylinks: PAYLINKS_DASHBOARD_TOKEN must be set to serve the dashboard on {host}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    app = build(connect(config), config, read_only=read_only)
    print(f"paylinks dashboard on http://{host}:{port}/", file=sys.stderr, flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
    return 0
