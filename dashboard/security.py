"""Who may see the dashboard and act from it: a token, a signed session cookie, CSRF checks."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

SESSION_COOKIE = "paylinks_session"
CSRF_FIELD = "csrf"
# Paths anyone may reach: the login form and the static files it loads (no data in any).
PUBLIC = frozenset({"/login", "/static/dashboard.css", "/static/live.js"})
HEADERS = {
    # Scripts and styles only from the dashboard itself, never framed, nothing cached.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` with a form, refused below.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """Sessions are `nonce.signature` cookies, signed with a key drawn when the process starts
    (a restart signs everyone out). With a token set, a session exists only after the token
    was given at the login form, or a request carries `Authorization: Bearer <token>`.
    Every POST must come from the dashboard's own pages: same origin, and the form's CSRF
    token derived from the session."""

    def __init__(self, token: str | None, read_only: bool) -> None:
        self.token = token
        self.read_only = read_only
        self._key = secrets.token_bytes(32)
        # The login form, answered with 401 to a browser that is not signed in.
        self.login_page: Callable[[web.Request, int], web.Response] | None = None

    def _sign(self, purpose: str, nonce: str) -> str:
        return hmac.new(self._key, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, request: web.Request) -> str | None:
        """The request's session nonce, if its cookie was signed by this process."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        nonce, _, signature = cookie.partition(".")
        if nonce and hmac.compare_digest(signature, self._sign("session", nonce)):
            return nonce
        return None

    def csrf_token(self, nonce: str) -> str:
        return self._sign("csrf", nonce)

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    @staticmethod
    def same_origin(request: web.Request) -> bool:
        """What the browser says of where a POST comes from: a cross-site form or script
        is refused even before its CSRF token is looked at."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            return False
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    def set_cookie(self, response: web.StreamResponse, request: web.Request, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        nonce = self.session(request)
        by_bearer = self.bearer(request)
        if request.path in PUBLIC:
            return await handler(request)
        if self.token and nonce is None and not by_bearer:
            return self.unauthorized(request)
        if request.method == "POST":
            if self.read_only:
                raise web.HTTPForbidden(text="the dashboard is read-only")
            if not self.same_origin(request):
                raise web.HTTPForbidden(text="cross-site request refused")
            if not by_bearer:
                form = await request.post()
                given = str(form.get(CSRF_FIELD, ""))
                if nonce is None or not hmac.compare_digest(given, self.csrf_token(nonce)):
                    raise web.HTTPForbidden(text="missing or stale CSRF token: reload the page")
        fresh = None
        if nonce is None:
            # Without a token, every browser gets a session: its CSRF token hangs on it.
            fresh = self.new_session()
            nonce = fresh.partition(".")[0]
        request["csrf"] = self.csrf_token(nonce)
        response = await handler(request)
        if fresh and not by_bearer:
            self.set_cookie(response, request, fresh)
        return response

    def unauthorized(self, request: web.Request) -> web.Response:
        """401 and no data: a browser gets the login form, a script the status."""
        wants_page = "text/html" in request.headers.get("Accept", "")
        if request.method == "GET" and wants_page and self.login_page:
            return self.login_page(request, 401)
        return web.Response(
            status=401, text="401: sign in first", headers={"WWW-Authenticate": "Bearer"}
        )
