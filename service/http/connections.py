"""Connection guards below HTTP: caps on open connections (per client address and in total) and a
deadline for each request head, so one slow or greedy client cannot hold every file descriptor.

uvicorn's own ``timeout_keep_alive`` only runs between requests, and ``limit_concurrency`` answers 503
only once a request head has arrived: a client that opens connections and trickles a header line every
few seconds holds them forever, until ``accept()`` fails with EMFILE and nobody (health probes
included) gets in. Here every connection is counted when accepted: over a cap it gets a 503 and is
closed at once, and a head that is not complete within ``header_timeout_s`` of the connection opening
(or of the previous response) gets a 408 and is closed. The caps sit below the descriptor limit, so
``accept()`` itself keeps working and refusals stay fast.

The guard plugs into uvicorn through its public ``http=`` setting (a protocol class): a subclass of
uvicorn's httptools protocol that adds these checks around the parent's own callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.error_render import error_body

logger = logging.getLogger(__name__)

#: descriptors kept free for everything that is not a client connection (model files, logs, pipes,
#: multipart spool files, the metrics directory): at least this many, and an eighth of the limit
MIN_FD_HEADROOM = 128


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (as nginx's worker_rlimit_nofile would); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # a container may forbid it: keep the soft limit
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_caps(fd_limit: int, max_total: int = 0, max_per_client: int = 0) -> tuple[int, int]:
    """(total, per client address): the settings where given (the total never above the descriptor limit
    less headroom), else the limit less headroom and half of that total."""
    ceiling = max(1, fd_limit - max(MIN_FD_HEADROOM, fd_limit // 8))
    total = min(max_total, ceiling) if max_total > 0 else ceiling
    per_client = min(max_per_client, total) if max_per_client > 0 else max(1, total // 2)
    return total, per_client


@dataclass
class ConnectionGuard:
    """Open-connection counts of one process (the event loop's thread only: no lock)."""

    max_total: int
    max_per_client: int
    header_timeout_s: float
    metrics: Any = None  # service.metrics.Metrics: http_refused_total, http_open_connections
    open_total: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; the refusal reason when a cap is reached."""
        if self.open_total >= self.max_total:
            return "total_connections"
        if self.by_client.get(client, 0) >= self.max_per_client:
            return "client_connections"
        self.open_total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        if self.metrics is not None:
            self.metrics.open_connections.inc()
        return None

    def release(self, client: str) -> None:
        self.open_total -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)  # bounded by the open connections, never by history
        if self.metrics is not None:
            self.metrics.open_connections.dec()

    def refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.refused, reason).inc()

    def describe(self) -> str:
        return (f"at most {self.max_total} open connections, {self.max_per_client} per client address; "
                f"request heads within {self.header_timeout_s:g} s")


def _raw_response(status: str, code: str, message: str, retry_after: bool) -> bytes:
    body = error_body(code, message)
    head = [f"HTTP/1.1 {status}", "content-type: application/json", "connection: close",
            f"content-length: {len(body)}"]
    if retry_after:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a ConnectionGuard's caps and head deadline."""

    guard: ConnectionGuard
    _peer = "-"
    _counted = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else "-"
        reason = self.guard.admit(self._peer)
        if reason is not None:
            self.guard.refused(reason)
            logger.debug("connection from %s refused: %s", self._peer, reason)
            what = "this client address has" if reason == "client_connections" else "the server has"
            limit = self.guard.max_per_client if reason == "client_connections" else self.guard.max_total
            transport.write(_raw_response(
                "503 Service Unavailable", "too_many_connections",
                f"{what} {limit} connections open, the most allowed: reuse keep-alive connections "
                "or open fewer at once, then retry", retry_after=True))
            transport.close()
            return
        self._counted = True
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._counted:
            self._counted = False
            self.guard.release(self._peer)
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's head has arrived already
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head: uvicorn's keep-alive timer runs meanwhile

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.guard.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being served: its head did arrive
        self.guard.refused("header_timeout")
        logger.debug("connection from %s closed: request head not complete in %.1f s", self._peer,
                     self.guard.header_timeout_s)
        self.transport.write(_raw_response(
            "408 Request Timeout", "request_timeout",
            f"the request head (request line and headers) did not arrive within {self.guard.header_timeout_s:g} s",
            retry_after=False))
        self.transport.close()


def guarded_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``guard``'s caps and head deadline (pass as ``Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})
