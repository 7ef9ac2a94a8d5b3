"""Request bodies: a minimum upload rate, and one byte budget shared by every body in flight.

Without them, 300 uploads of 19 MiB held open one byte short took the server from 0.5 to 8.8 GiB:
each under the per-request limit, together past what the machine has. Here a body's bytes are
reserved from one budget (``max_body_bytes_in_flight``) before they are buffered, up front from
``Content-Length`` or chunk by chunk for a chunked body, and released when the request is answered; a
request that would pass the budget gets 503 + Retry-After at once instead of memory. A body must
also keep coming: after a grace of ``body_timeout_s`` it must have arrived at ``body_min_rate`` bytes
a second on average, or the request ends with 408 (only the time the application waits for it
counts, so a request queued behind others is never blamed for it).

glibc keeps freed heap memory for reuse: after a burst of large bodies drains, the heap is handed back
to the OS (``malloc_trim``, off the event loop), so memory returns near its baseline.

Pure ASGI middleware around the app's ``receive``: no HTTP framework types, no runtime.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestTimeout, ServiceBusy
from service.http.error_render import render_error

logger = logging.getLogger(__name__)

#: a drain after bodies of this many bytes in flight at once returns the freed heap to the OS, this long after
TRIM_AFTER_BYTES = 64 * 1024 * 1024
TRIM_DELAY_S = 1.0


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


_malloc_trim = _libc_malloc_trim()


@dataclass
class BodyBudget:
    """Bytes of request bodies held by this process (the event loop's thread only: no lock)."""

    limit: int
    in_use: int = 0
    peak: int = 0

    def take(self, n: int) -> bool:
        if self.in_use + n > self.limit:
            return False
        self.in_use += n
        self.peak = max(self.peak, self.in_use)
        return True

    def give(self, n: int) -> None:
        self.in_use -= n


class BodyGuard:
    """ASGI middleware: reserve each body's bytes from ``budget`` and hold it to a minimum rate."""

    def __init__(self, app: ASGIApp, budget: BodyBudget, min_rate: float, grace_s: float, max_body: int,
                 metrics: Any = None) -> None:
        self.app = app
        self.budget = budget
        self.max_body = max_body  # a larger Content-Length is the route's 413, not this budget's 503
        self.min_rate = min_rate
        self.grace_s = grace_s
        self.metrics = metrics
        self._trim_pending = False

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.refused, reason).inc()

    def _busy(self, n: int) -> ServiceBusy:
        self._refused("body_budget")
        return ServiceBusy(
            f"the server is receiving {self.budget.in_use} bytes of request bodies and this one ({n} bytes) "
            f"would pass its budget of {self.budget.limit}: retry shortly",
            headers={"Retry-After": "1", "Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_headers(scope)
        if not declared and not chunked:  # no body on its way (GET, /metrics, probes): nothing to guard
            await self.app(scope, receive, send)
            return
        held = 0
        if 0 < declared <= self.max_body:
            if not self.budget.take(declared):
                exc = self._busy(declared)
                await render_error(scope, exc)(scope, receive, send)
                return
            held = declared
        started = time.monotonic()
        received = 0
        complete = False

        async def guarded_receive() -> Message:
            nonlocal held, received, complete
            if complete:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            # the body's arrival deadline: grace, plus one second per min_rate bytes already received
            allowed = started + self.grace_s + received / self.min_rate - time.monotonic()
            try:
                async with asyncio.timeout(max(allowed, 0.001)):  # no extra task, unlike wait_for
                    message = await receive()
            except TimeoutError:
                self._refused("body_too_slow")
                raise RequestTimeout(
                    f"the request body arrived too slowly: {received} bytes in {time.monotonic() - started:.1f} s, "
                    f"under the minimum of {self.min_rate:g} bytes/s after {self.grace_s:g} s: send it faster",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > held:  # chunked, or more than declared (the server stops that): reserve as it comes
                    if not self.budget.take(received - held):
                        raise self._busy(received)
                    held = received
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.budget.give(held)
            if self.budget.in_use == 0 and self.budget.peak >= TRIM_AFTER_BYTES and not self._trim_pending:
                self._trim_pending = True
                asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        """After a burst of large bodies: hand the freed heap back to the OS (glibc keeps it otherwise)."""
        self._trim_pending = False
        if self.budget.in_use > 0:
            return  # a new burst: the next drain trims
        self.budget.peak = 0
        # Large bodies are often held by reference cycles (an exception's traceback keeps the frame that
        # held the body), which only the cyclic collector frees, and it is not triggered by big buffers.
        t0 = time.perf_counter()
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)
        logger.debug("after a burst of request bodies: collected and trimmed the heap in %.1f ms",
                     (time.perf_counter() - t0) * 1e3)


def _body_headers(scope: Scope) -> tuple[int, bool]:
    """(Content-Length, whether Transfer-Encoding is set): the body the request announces."""
    length, chunked = 0, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked
