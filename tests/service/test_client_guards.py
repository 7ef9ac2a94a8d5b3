"""Unit tests of the slow/heavy-client guards: connection caps (service.http.connections) and the request
body budget and minimum rate (service.http.body_guard), on fake ASGI apps: no server, no model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.errors import RequestTimeout, ServiceBusy
from service.http.body_guard import BodyBudget, BodyGuard
from service.http.connections import MIN_FD_HEADROOM, ConnectionGuard, connection_caps


def test_caps_leave_descriptors_free_and_split_per_client() -> None:
    assert connection_caps(1024) == (1024 - MIN_FD_HEADROOM, (1024 - MIN_FD_HEADROOM) // 2)
    total, per_client = connection_caps(1 << 20)
    assert total == (1 << 20) - (1 << 17) and per_client == total // 2  # an eighth kept free when larger
    assert connection_caps(1024, max_total=5000, max_per_client=9000) == (896, 896)  # never above the limit
    assert connection_caps(1024, max_total=100, max_per_client=10) == (100, 10)


def test_guard_caps_one_address_and_the_total_and_forgets_closed_clients() -> None:
    g = ConnectionGuard(max_total=5, max_per_client=3, header_timeout_s=1)
    assert [g.admit("10.0.0.2") for _ in range(4)] == [None, None, None, "client_connections"]
    assert g.admit("10.0.0.3") is None and g.admit("10.0.0.4") is None
    assert g.admit("10.0.0.5") == "total_connections"
    for client in ("10.0.0.2", "10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        g.release(client)
    assert g.open_total == 0 and g.by_client == {}


def _scope(content_length: int | None = None) -> dict[str, Any]:
    headers = ([(b"transfer-encoding", b"chunked")] if content_length is None
               else [(b"content-length", str(content_length).encode())])
    return {"type": "http", "method": "POST", "path": "/classify", "headers": headers}


class _Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.messages[0]["headers"]).get(name)


async def _reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, then answers 200 with its length."""
    n, more = 0, True
    while more:
        m = await receive()
        n += len(m.get("body", b""))
        more = m.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(n).encode()})


def _chunks(*bodies: bytes, then: asyncio.Event | None = None) -> Any:
    queue = list(bodies)

    async def receive() -> dict[str, Any]:
        if queue:
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue) or then is not None}
        if then is not None:
            await then.wait()  # a client that stopped sending
        return {"type": "http.disconnect"}

    return receive


async def test_declared_body_over_the_budget_is_refused_before_the_app_runs() -> None:
    budget = BodyBudget(limit=1000, in_use=600)
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    sent = _Sent()
    await BodyGuard(app, budget, min_rate=1e6, grace_s=10, max_body=10_000)(_scope(500), _chunks(b"x"), sent)
    assert not called and sent.status == 503 and sent.header(b"retry-after") == b"1"
    assert b"server_busy" in sent.messages[1]["body"]
    assert budget.in_use == 600


async def test_budget_is_held_while_the_request_runs_and_released_after() -> None:
    budget = BodyBudget(limit=1000)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        seen.append(budget.in_use)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await BodyGuard(app, budget, min_rate=1e6, grace_s=10, max_body=10_000)(_scope(400), _chunks(b"y" * 400), _Sent())
    assert seen == [400] and budget.in_use == 0 and budget.peak == 400


async def test_a_request_without_a_body_passes_straight_through() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert receive is marker  # not wrapped: no deadline, no reservation
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def marker() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = _Sent()
    scope = {"type": "http", "method": "GET", "path": "/health/ready", "headers": []}
    await BodyGuard(app, BodyBudget(limit=1), min_rate=1, grace_s=0, max_body=1)(scope, marker, sent)
    assert sent.status == 204


async def test_a_declared_length_over_the_upload_limit_is_left_to_the_route() -> None:
    """Content-Length: 10**18 is the route's 413 (a client error), not the budget's 503."""
    budget = BodyBudget(limit=1000)
    sent = _Sent()
    guard = BodyGuard(_reading_app, budget, min_rate=1e6, grace_s=10, max_body=500)
    await guard(_scope(10**18), _chunks(b"z" * 10), sent)
    assert sent.status == 200 and budget.in_use == 0


async def test_chunked_body_is_reserved_as_it_arrives() -> None:
    budget = BodyBudget(limit=1000, in_use=500)
    guard = BodyGuard(_reading_app, budget, min_rate=1e6, grace_s=10, max_body=10_000)
    with pytest.raises(ServiceBusy) as e:
        await guard(_scope(), _chunks(b"a" * 300, b"b" * 300), _Sent())
    assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
    assert budget.in_use == 500


async def test_a_stalled_body_ends_with_408_and_closes_the_connection() -> None:
    budget = BodyBudget(limit=10_000)
    guard = BodyGuard(_reading_app, budget, min_rate=1000, grace_s=0.05, max_body=10_000)
    with pytest.raises(RequestTimeout) as e:
        await guard(_scope(5000), _chunks(b"c" * 10, then=asyncio.Event()), _Sent())
    assert e.value.status == 408 and e.value.headers["Connection"] == "close"
    assert "1000 bytes/s" in e.value.message
    assert budget.in_use == 0


async def test_after_the_body_receive_waits_for_a_disconnect_without_a_deadline() -> None:
    """Starlette's responses listen for a disconnect once the body is read: that wait is not a slow body."""
    gone = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        waiter = asyncio.ensure_future(receive())
        await asyncio.sleep(0.1)  # past the guard's 0.01 s grace: the wait must still be pending, not a 408
        assert not waiter.done()
        gone.set()
        assert (await waiter)["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages = [{"type": "http.request", "body": b"abc", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    sent = _Sent()
    guard = BodyGuard(app, BodyBudget(limit=100), min_rate=1, grace_s=0.01, max_body=100)
    await guard(_scope(3), receive, sent)
    assert sent.status == 204
