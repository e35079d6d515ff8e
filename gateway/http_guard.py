"""What an HTTP client holding no credential may cost the gateway: little, and bounded.

Two layers, both in front of FastAPI (docs/GATEWAY.md, "HTTP limits"):

- :class:`RequestGuard`, a pure ASGI middleware, looks at the headers only: an admin
  route without the right bearer token is answered 401, a declared ``Content-Length`` over
  the cap 413, before a byte of the body is read (FastAPI resolves body parameters before
  the route's ``dependencies=`` run, so a dependency alone would read and parse the body
  first). A body without a declared length (chunked) is counted while it streams and cut
  off at the cap. Every refusal closes the connection, so the rest of a body is never
  read.
- :func:`guarded_protocol`, uvicorn's h11 protocol with a deadline: a request (headers and
  body) must arrive whole within ``request_timeout_s`` of the connection opening or of the
  previous response, however slowly it trickles (uvicorn has no such timeout: its
  keep-alive timer is cancelled by any byte received); a response the client does not read
  is cut off the same way: once the socket's buffers are full (asyncio's
  ``pause_writing``), the client must take at least :data:`MIN_READ_BYTES` of it (or the
  rest) every ``request_timeout_s``, or the connection is aborted, its unsent output
  dropped rather than flushed (uvicorn has no such timeout: a client that never reads holds
  its connection, the response and every pipelined one behind it for ever); and at most
  ``max_connections`` connections are kept: one more closes the connection that has waited
  longest for its request or for its client to read, so half-sent requests and unread
  responses cannot hold every file handle while honest requests wait.

Every refusal is counted in ``edgeproof_gateway_http_rejections_total{reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config import HttpLimits

log = logging.getLogger(__name__)
UNAUTHENTICATED = "unauthenticated"
BODY_TOO_LARGE = "body_too_large"
REQUEST_TIMEOUT = "request_timeout"
TOO_MANY_CONNECTIONS = "too_many_connections"
RESPONSE_TIMEOUT = "response_timeout"
BAD_PARAMETER = "bad_parameter"  # a path or query parameter FastAPI's validation refused
BAD_BODY = "bad_body"  # a request body it refused
REJECTION_REASONS = (UNAUTHENTICATED, BODY_TOO_LARGE, REQUEST_TIMEOUT, TOO_MANY_CONNECTIONS,
                     RESPONSE_TIMEOUT, BAD_PARAMETER, BAD_BODY)
Reject = Callable[[str], None]
# Connections accepted per event-loop turn; file handles in use stay below
# max_connections + ACCEPT_BACKLOG (plus the store's and MQTT's own).
ACCEPT_BACKLOG = 128
# While its response waits in the gateway's memory, a client must read this much of it (or
# the rest) every request_timeout_s: 6.4 KB/s with the default 10 s. The pause itself ends
# only when the buffer is down to asyncio's low-water mark, and one response (1000 leaves)
# can be megabytes written at once: a slow honest reader must not be cut off for that.
MIN_READ_BYTES = 64 * 1024


def token_matches(given: bytes, expected: bytes) -> bool:
    """Return whether ``given`` is the admin token (constant time; empty never matches)."""
    return bool(given) and bool(expected) and hmac.compare_digest(given, expected)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _bearer(scope: Scope) -> bytes:
    scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


async def _refuse(send: Send, status: int, detail: str,
                  headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``{"detail": ...}`` and close the connection (the body stays unread)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: admin token and body cap, checked before the body is read."""

    def __init__(self, app: ASGIApp, *, admin_token: bytes, admin_routes: Sequence[BaseRoute],
                 max_body_bytes: int, on_reject: Reject) -> None:
        self.app = app
        self._token = admin_token
        self._admin_routes = tuple(admin_routes)
        self._max_body = max_body_bytes
        self._reject = on_reject

    def _is_admin(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is not Match.NONE for route in self._admin_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._is_admin(scope) and not token_matches(_bearer(scope), self._token):
            self._reject(UNAUTHENTICATED)
            await _refuse(send, 401, "admin token required", [(b"www-authenticate", b"Bearer")])
            return
        declared = _header(scope, b"content-length")
        # h11 has already refused a Content-Length that is not a decimal number.
        if declared is not None and int(declared) > self._max_body:
            self._reject(BODY_TOO_LARGE)
            await _refuse(send, 413, f"request body over {self._max_body} bytes")
            return
        chunked = declared is None and _header(scope, b"transfer-encoding") is not None
        has_body = chunked or bool(declared and int(declared))
        await _CappedBody(self.app, send, self._max_body, self._reject, has_body=has_body)(
            scope, receive)


class _CappedBody:
    """One request: counts the body while the app reads it; refuses it at the cap."""

    def __init__(self, app: ASGIApp, send: Send, max_body: int, reject: Reject, *,
                 has_body: bool) -> None:
        self._app, self._send = app, send
        self._max_body, self._reject = max_body, reject
        self._received = 0
        self._body_done = not has_body
        self._started = False
        self._refused = False

    async def __call__(self, scope: Scope, receive: Receive) -> None:
        async def capped_receive() -> Message:
            if self._refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self._received += len(message.get("body", b""))
                self._body_done = not message.get("more_body", False)
                if self._received > self._max_body:
                    await self._refuse()
                    return {"type": "http.disconnect"}
            return message

        await self._app(scope, capped_receive, self._checked_send)

    async def _refuse(self) -> None:
        self._refused = True
        self._reject(BODY_TOO_LARGE)
        if not self._started:
            self._started = True
            await _refuse(self._send, 413, f"request body over {self._max_body} bytes")

    async def _checked_send(self, message: Message) -> None:
        if self._refused:
            return  # the 413 is out; what the app says after the cut is dropped
        if message["type"] == "http.response.start":
            self._started = True
            headers = list(message.get("headers", []))
            # Every answer is what its Content-Type says: a browser never sniffs a JSON
            # answer (which may hold text a device or a stranger chose) into a page.
            if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                headers.append((b"x-content-type-options", b"nosniff"))
            if not self._body_done:
                # Answered before the whole body arrived: close rather than read the rest.
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await self._send(message)


@dataclass(frozen=True)
class _Counter:
    reject: Reject


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a whole-request deadline, a deadline on reading the
    response, and a connection cap."""

    _limits: ClassVar[HttpLimits]
    _counter: ClassVar[_Counter]
    _deadline: asyncio.TimerHandle | None = None
    _waiting_since = 0.0
    _stall: asyncio.TimerHandle | None = None  # armed while output waits for the client
    _stalled_since = 0.0
    _unsent = 0  # output waiting when _stall was armed

    # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport (and ignores
    # [override] itself); this override keeps uvicorn's signature.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        # Connections closed in this loop turn leave the set only at the next one.
        open_now = sum(1 for c in self.connections if not c.transport.is_closing())
        if open_now > self._limits.max_connections:
            self._make_room()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request arrived whole: the app's time is not limited here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE,
                                                                           h11.SEND_BODY):
            self._arm()  # the next request on this keep-alive connection
        elif self.transport.is_closing() and self.transport.get_write_buffer_size():
            # Closed after this response: close() waits for the client to read the rest,
            # for ever if it never does (and the connection no longer counts to the cap).
            self._watch_output()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_output()  # the socket's buffers are full: the client is not reading

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unwatch_output()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unwatch_output()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = self.loop.time()
        self._deadline = self.loop.call_later(self._limits.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        stalled = self._stall is not None or self.transport.is_closing()
        self.drop_connection(RESPONSE_TIMEOUT if stalled else REQUEST_TIMEOUT)

    def _watch_output(self) -> None:
        if self._stall is None:
            self._stalled_since = self.loop.time()
            self._check_output_later()

    def _check_output_later(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._stall = self.loop.call_later(self._limits.request_timeout_s, self._check_output)

    def _unwatch_output(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _check_output(self) -> None:
        self._stall = None
        unsent = self.transport.get_write_buffer_size()
        if unsent and self._unsent - unsent < MIN_READ_BYTES:
            self.drop_connection(RESPONSE_TIMEOUT)
        elif unsent:
            self._check_output_later()  # read, if slowly: the next period starts

    def waiting_since(self) -> float | None:
        """The loop time since which this connection has waited for a request or for its
        client to read its response (the earlier if both), or None if neither."""
        since = [t for t, armed in ((self._waiting_since, self._deadline),
                                    (self._stalled_since, self._stall)) if armed is not None]
        return min(since, default=None)

    def _make_room(self) -> None:
        """Close the connection that has waited longest for its request or for its client
        to read (maybe this one)."""
        waiting = [(since, c) for c in self.connections if isinstance(c, _GuardedH11Protocol)
                   and not c.transport.is_closing()
                   and (since := c.waiting_since()) is not None]
        victim = min(waiting, key=lambda w: w[0], default=(0.0, self))[1]
        victim.drop_connection(TOO_MANY_CONNECTIONS)

    def drop_connection(self, reason: str) -> None:
        """Close this connection (if still open, or still holding output), counting
        ``reason``. Output the client has not read is dropped, not flushed: close() would
        wait for it for ever."""
        self._disarm()
        self._unwatch_output()
        unsent = self.transport.get_write_buffer_size()
        if self.transport.is_closing() and not unsent:
            return
        self._counter.reject(reason)
        log.debug("HTTP connection from %s closed: %s", self.client, reason)
        if not unsent:
            self.transport.close()
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A reset, so the kernel drops what it holds for the client too (megabytes).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def guarded_protocol(limits: HttpLimits, on_reject: Reject) -> type[asyncio.Protocol]:
    """Return an h11 protocol class for uvicorn enforcing ``limits``."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,),
                {"_limits": limits, "_counter": _Counter(on_reject)})


def server_config(app: Any, host: str, port: int, limits: HttpLimits,
                  on_reject: Reject) -> uvicorn.Config:
    """Return the uvicorn configuration the gateway serves its API with."""
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False,
        # uvicorn's own handlers would bypass the process's (and its repeat limit).
        log_config=None,
        http=guarded_protocol(limits, on_reject),
        timeout_keep_alive=limits.keepalive_timeout_s,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        # The cap above is enforced per connection; uvicorn's own limit_concurrency would
        # answer 503 to honest clients while half-sent requests hold the connections.
        limit_concurrency=None,
        # asyncio accepts up to `backlog` connections in one go before any of them runs
        # (and before a closed one gives its file handle back): with uvicorn's 2048, a burst
        # of 1,100 connections ran a 1024-handle process out of handles despite the cap.
        backlog=ACCEPT_BACKLOG)
