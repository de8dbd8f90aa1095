"""The dashboard's pages and actions, as aiohttp handlers over the fleet's Redis."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from redis.asyncio import Redis

from paylinks.dashboard import batches, failures
from paylinks.dashboard.fleet import FleetReader
from paylinks.dashboard.progress import RateTracker
from paylinks.dashboard.requests import RequestRow, find_by_token, read_request, read_rows
from paylinks.dashboard.security import Guard
from paylinks.jobs import layout
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.deadletters import DeadLetters
from paylinks.jobs.layout import RecordField, State
from paylinks.jobs.records import RESULT_COLUMNS, iter_records, read_fields

BATCHES_PER_PAGE = 50
REQUESTS_PER_PAGE = 100
LETTERS_PER_PAGE = 100
# Messages shown once, on the page an action returns to; the oldest go first.
NOTICES_KEPT = 1000
CSV_PAGE = 500


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def rate(per_second: float | None) -> str:
    return "-/s" if per_second is None else f"{per_second:.1f}/s"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("paylinks.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals |= {"utc": batches.utc, "duration": duration, "rate": rate}
    return env


def page_number(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("page", "0")))
    except ValueError:
        return 0


def query_for(request: web.Request) -> Any:
    """What a pager link's query is for another page, the other parameters kept."""
    return lambda page: urlencode({**request.query, "page": page})


class Pages:
    def __init__(
        self, redis: Redis, config: ProducerConfig, guard: Guard, fleet: FleetReader
    ) -> None:
        self.redis = redis
        self.guard = guard
        self.fleet = fleet
        self.dead_letters = DeadLetters(redis, config)
        self.rates = RateTracker()
        self.templates = templates()
        self._notices: OrderedDict[str, str] = OrderedDict()

    def render(
        self, request: web.Request, name: str, status: int = 200, **values: Any
    ) -> web.Response:
        session = self.guard.session(request)
        html = self.templates.get_template(name).render(
            read_only=self.guard.read_only,
            csrf=request.get("csrf", ""),
            here=request.path_qs,
            notice=self._notices.pop(session, None) if session else None,
            **values,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    def missing(self, request: web.Request, what: str) -> web.Response:
        return self.render(request, "missing.html", status=404, what=what)

    async def batch_list(self, request: web.Request) -> web.Response:
        page = page_number(request)
        found, more = await batches.recent(self.redis, page, BATCHES_PER_PAGE, self.rates)
        return self.render(
            request, "batches.html", batches=found, page=page, more=more, query=query_for(request)
        )

    async def batch(self, request: web.Request) -> web.Response:
        name = request.match_info["batch"]
        view = await batches.one(self.redis, name, self.rates)
        if view is None:
            return self.missing(
                request, f"No batch {name!r}: unknown, or older than its retention."
            )
        token = request.query.get("token", "").strip()
        page = page_number(request)
        if token:
            key = await find_by_token(self.redis, token)
            rows = await _rows_of_batch(self.redis, name, key)
            more = False
        else:
            rows, more = await batches.request_page(self.redis, name, page, REQUESTS_PER_PAGE)
        failed = view.counts[State.FAILED]
        return self.render(
            request,
            "batch.html",
            b=view,
            states=[s.value for s in State],
            groups=await failures.failure_groups(self.redis, name) if failed else [],
            scan_limit=failures.SCAN_LIMIT,
            rows=rows,
            more=more,
            page=page,
            token=token,
            query=query_for(request),
        )

    async def batch_status(self, request: web.Request) -> web.Response:
        """Counts, rate and ETA of the batches asked for, for the pages' live updates."""
        names = request.query.getall("id", [])[:BATCHES_PER_PAGE]
        found = await batches.read_batches(self.redis, names, self.rates)
        return web.json_response({b.name: b.as_json() for b in found})

    async def results_csv(self, request: web.Request) -> web.StreamResponse:
        """`paylinks results --format csv`, streamed a page of records at a time."""
        name = request.match_info["batch"]
        if not await self.redis.exists(layout.batch_key(name)):
            return self.missing(request, f"No batch {name!r}.")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{_filename(name)}.csv"',
            }
        )
        await response.prepare(request)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, RESULT_COLUMNS)
        writer.writeheader()
        count = 0
        async for record in iter_records(self.redis, name, CSV_PAGE):
            writer.writerow(record.result())
            count += 1
            if count % CSV_PAGE == 0:
                await response.write(buffer.getvalue().encode())
                buffer.seek(0)
                buffer.truncate()
        await response.write(buffer.getvalue().encode())
        await response.write_eof()
        return response

    async def request_page(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        row = await read_request(self.redis, key)
        if row is None:
            return self.missing(request, "No such request: unknown, or older than its retention.")
        dead = await self.redis.zscore(layout.DEAD_LETTERS, key) is not None
        return self.render(request, "request.html", r=row, dead=dead)

    async def search(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "").strip()
        key = await find_by_token(self.redis, token) if token else None
        if key is None:
            return self.missing(request, f"No request with checkoutToken {token!r}.")
        raise web.HTTPSeeOther(f"/requests/{key}")

    async def letters(self, request: web.Request) -> web.Response:
        batch = request.query.get("batch", "").strip() or None
        page = page_number(request)
        found, more = await failures.letters_page(self.redis, batch, page, LETTERS_PER_PAGE)
        return self.render(
            request,
            "dead_letters.html",
            letters=found,
            batch=batch,
            page=page,
            more=more,
            scan_limit=failures.SCAN_LIMIT,
            query=query_for(request),
        )

    async def retry(self, request: web.Request) -> web.Response:
        """Queue dead letters again, as `paylinks dead-letters retry` does."""
        form = await request.post()
        batch, token = str(form.get("batch", "")) or None, str(form.get("token", "")) or None
        if not batch and not token:
            raise web.HTTPBadRequest(text="retry needs a batch or a checkoutToken")
        counts = await self.dead_letters.retry(batch=batch, token=token)
        busy = (
            f", {counts['busy']} still being cleaned up: try again shortly"
            if counts["busy"]
            else ""
        )
        self.notify(request, f"Queued again: {counts['retried']}{busy}.")
        raise _back(request, form)

    async def purge(self, request: web.Request) -> web.Response:
        """Forget dead letters, as `paylinks dead-letters purge` does."""
        form = await request.post()
        batch = str(form.get("batch", "")) or None
        purged = await self.dead_letters.purge(batch=batch)
        self.notify(request, f"Purged {purged} dead letters; their records stay failed.")
        raise _back(request, form)

    async def fleet_page(self, request: web.Request) -> web.Response:
        return self.render(
            request,
            "fleet.html",
            f=await self.fleet.read(),
            health_interval=self.fleet.health_interval_s,
        )

    async def login_form(self, request: web.Request) -> web.Response:
        if not self.guard.token:
            raise web.HTTPSeeOther("/")
        return self.login(request)

    def login(
        self, request: web.Request, status: int = 200, notice: str | None = None
    ) -> web.Response:
        next_page = request.query.get("next", request.path_qs if status == 401 else "/")
        html = self.templates.get_template("login.html").render(
            read_only=self.guard.read_only, notice=notice, next=_local(next_page)
        )
        return web.Response(text=html, content_type="text/html", status=status)

    async def sign_in(self, request: web.Request) -> web.Response:
        if not self.guard.token:
            raise web.HTTPSeeOther("/")
        if not self.guard.same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        if not self.guard.token_matches(str(form.get("token", ""))):
            # Slows down guessing from one client; the token should be long anyway.
            await asyncio.sleep(0.2)
            return self.login(request, 401, "That is not the dashboard's token.")
        response = web.HTTPSeeOther(_local(str(form.get("next", "/"))))
        self.guard.set_cookie(response, request, self.guard.new_session())
        raise response

    def notify(self, request: web.Request, message: str) -> None:
        session = self.guard.session(request)
        if session:
            self._notices[session] = message
            while len(self._notices) > NOTICES_KEPT:
                self._notices.popitem(last=False)


async def _rows_of_batch(redis: Redis, batch: str, key: str | None) -> list[RequestRow]:
    """The request of a searched token, if it belongs to this batch."""
    if key is None:
        return []
    (found,) = await read_fields(redis, [key], [RecordField.BATCH])
    if found is None or found.get(RecordField.BATCH) != batch:
        return []
    return await read_rows(redis, [key])


def _local(path: str) -> str:
    """A path on this site only: never an open redirect to another."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _filename(batch: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in batch) or "results"


def _back(request: web.Request, form: Any) -> web.HTTPSeeOther:
    """Back to the page the action was taken on."""
    return web.HTTPSeeOther(_local(str(form.get("back", "/"))))
