"""Who may talk to the server.

- Bound to a loopback address (the default), the server answers only requests whose Host header is a loopback
  name, so a web page elsewhere cannot reach it through DNS rebinding.
- Bound anywhere else it needs a token (`--token` or MAMMO_SERVE_TOKEN), checked on every request: an
  `Authorization: Bearer` header, or the cookie set when a browser first opens `/?token=...` (then redirected to
  the same page without the token in its address).
- Requests that change something (POST) coming from another site's page (an Origin header that is not this
  server) are refused.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse

TOKEN_ENV = "MAMMO_SERVE_TOKEN"
COOKIE = "mammo_serve_token"
MIN_TOKEN_LENGTH = 16
_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s]*")


def is_loopback(host: str) -> bool:
    """'localhost' or a loopback IP address: for the address the server binds and for the Host header of a
    request to a server without token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the server will require (None on loopback without one); ValueError when binding beyond
    loopback without a usable token."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token must have at least {MIN_TOKEN_LENGTH} characters")
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines: give a token (--token or "
                         f"{TOKEN_ENV}), e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    return token


class RedactToken(logging.Filter):
    """Access-log lines show `?token=***`: the first request of a browser carries the token in its address."""

    def filter(self, record):
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URL.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _hostname(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


class AccessMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request, call_next):
        host = request.headers.get("host", "")
        if self.token is None and not is_loopback(_hostname(host)):
            return PlainTextResponse("this server answers only on localhost", status_code=403)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and urlsplit(origin).netloc != host:
            return PlainTextResponse("cross-site request refused", status_code=403)
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                # remember it in a cookie and drop it from the address bar (and from later logs). The redirect
                # is relative (behind a TLS proxy the server's own idea of scheme and host may be wrong), with
                # one leading slash: '//host/...' would send the browser to another site
                url = request.url.remove_query_params("token")
                location = "/" + url.path.lstrip("/") + (f"?{url.query}" if url.query else "")
                response = RedirectResponse(location, status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict",
                                    secure=request.url.scheme == "https")
                return response
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("token required (open the address the server printed, which carries it)",
                                         status_code=401)
        return await call_next(request)
