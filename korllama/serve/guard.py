"""What the service checks at its door and says about its pages, whatever the route (docs/serving.md, "Security
defaults"):

- `HostAllowList`: answers only requests whose Host header is one of its names (loopback by default), so that a
  web page elsewhere cannot reach a token-less service on this machine through a visitor's browser by pointing its
  own host name at 127.0.0.1 (DNS rebinding); any other host is a 400 with a sentence.
- `SecurityHeaders`: a Content-Security-Policy on every answer (scripts and styles from this service only, no
  framing), X-Content-Type-Options and X-Frame-Options, so that markup that slipped into a page cannot run script.
- `header_timeout_protocol(seconds)`: uvicorn's HTTP protocol with a deadline for a request's headers, which
  uvicorn lacks (its keep-alive timeout starts only after a response, and any byte a client trickles in stops it).
"""

from __future__ import annotations

from collections.abc import Iterable

import h11
from starlette.datastructures import Headers
from uvicorn.protocols.http.h11_impl import H11Protocol

from korllama.defaults import HEADER_TIMEOUT_S
from korllama.serve.errors import SafeJSONResponse

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ANY_HOST = "*"  # --allow-host '*': every name (only behind a proxy that checks the Host itself)


def host_name(host: str) -> str:
    """A Host header's or --allow-host's name without its port, lower case, an IPv6 address in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address, as --allow-host ::1 or --host ::1 give it
        return f"[{host}]"
    return host.partition(":")[0].rstrip(".")


class HostAllowList:
    """ASGI middleware: a request whose Host is not one of `hosts` (any port) is a 400 naming it and the way to
    allow it."""

    def __init__(self, app, hosts: Iterable[str]):
        self.app, self.hosts = app, frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or ANY_HOST in self.hosts:
            return await self.app(scope, receive, send)
        sent = Headers(scope=scope).get("host", "")
        if host_name(sent) in self.hosts:
            return await self.app(scope, receive, send)
        name = host_name(sent)
        said = (f"the Host header {sent!r} is not a name this service answers to (names other than its own are "
                f"refused against DNS rebinding); if the service is reached as {name or 'that name'}, start it "
                f"with --allow-host {name or 'NAME'}") if sent else "the request has no Host header; send one"
        return await SafeJSONResponse({"detail": said}, status_code=400)(scope, receive, send)


# The page and everything else: this service's own scripts and styles only, no inline script or style, nothing
# framed. The docs (Swagger UI and ReDoc, from fastapi-offline) set styles inline (ReDoc's styled-components) and
# draw icons as data: images, and ReDoc searches in a worker it makes from a blob: URL.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
DATA_POLICY = "default-src 'none'; frame-ancestors 'none'"  # JSON, CSV, scripts: nothing to load or frame
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """ASGI middleware: the headers above on every answer, the policy chosen by what the answer is."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                kind = Headers(raw=headers).get("content-type", "")
                policy = DATA_POLICY if not kind.startswith("text/html") else \
                    DOCS_POLICY if scope["path"] in DOCS_PATHS else PAGE_POLICY
                headers += [(b"content-security-policy", policy.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
                message = message | {"headers": headers}
            await send(message)
        await self.app(scope, receive, send_with_headers)


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, with a deadline: a connection that has not sent a whole request head within
    `seconds` of opening (or of its previous answer) is closed. A client trickling header bytes would otherwise
    hold the connection for ever."""

    seconds = HEADER_TIMEOUT_S
    _deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._deadline is not None:  # the head is in: a request
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # kept alive: the next request's head has the same deadline
            self._arm()

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.seconds, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float = HEADER_TIMEOUT_S) -> type[H11Protocol]:
    """The protocol class for `uvicorn.run(..., http=...)` with this deadline."""
    return type("HeaderDeadline", (HeaderDeadline,), {"seconds": seconds})
