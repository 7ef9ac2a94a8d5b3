"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load tests that run beside the server.

httpx spends about a millisecond of CPU per request; on a 2-core machine a client at a few hundred
requests a second then takes the CPU the server needs and adds its own event-loop delay to every
latency it measures. This one sends a pre-built request and reads the status, headers and a
Content-Length body, about ten times cheaper. Latency is taken from just before the write to just
after the body: what a client on another machine would see, less the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Answer:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (refused, reset)
    headers: dict[str, str]
    error: str = ""
    #: an error answer's body (4xx/5xx; its first ``ERROR_BODY_BYTES``): what the server said was wrong
    body: bytes = b""

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


def build(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


#: an idle keep-alive connection is reused only this long: well under the server's keep-alive timeout
#: (uvicorn's 5 s), so a request never races the server closing the connection it was written to
IDLE_REUSE_S = 2.0
#: the error of a request whose connection closed before any byte of an answer came back
CLOSED_BEFORE_ANSWER = "ClosedBeforeAnswer"
#: how much of an error answer's body an Answer keeps (success bodies are read and dropped)
ERROR_BODY_BYTES = 2048


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def send(self, request: bytes) -> Answer:
        t0 = time.monotonic()
        if self.reader is not None and (self.reader.at_eof() or t0 - self.last_used > IDLE_REUSE_S):
            self.close()  # closed by the server, or about to be: a new connection instead
        got_head = False
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            got_head = True
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            content = await self.reader.readexactly(int(headers.get("content-length", "0")))
            status = int(status_line.split()[1])
            if headers.get("connection", "").lower() == "close":
                self.close()
            self.last_used = time.monotonic()
            return Answer(t0, self.last_used, status, headers,
                          body=content[:ERROR_BODY_BYTES] if status >= 400 else b"")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            error = type(e).__name__
            if isinstance(e, asyncio.IncompleteReadError) and not got_head and not e.partial:
                # closed with not one byte of an answer: the server never started this request (a drain
                # closing a connection it had just accepted, or an idle one), so a client may retry it
                error = CLOSED_BEFORE_ANSWER
            return Answer(t0, time.monotonic(), None, {}, error)

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.reader = self.writer = None


async def closed_loop(host: str, port: int, request: bytes, clients: int, seconds: float) -> list[Answer]:
    """``clients`` connections, each sending the next request as soon as the last is answered."""
    out: list[Answer] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        conn = Connection(host, port)
        while time.monotonic() < stop:
            out.append(await conn.send(request))
        conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return out


async def open_loop(host: str, port: int, request: bytes, rate: float, seconds: float,
                    max_connections: int = 512) -> list[Answer]:
    """Arrivals at a fixed ``rate`` whatever the answers (a crowd), on up to ``max_connections``."""
    offsets = [i / rate for i in range(int(rate * seconds))]
    return await scheduled(host, port, [request], offsets, max_connections)


def poisson_offsets(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Arrival times (s from the start) of a Poisson process at ``rate`` over ``seconds``: independent
    users, as a public service sees them (MLPerf's server scenario), not a metronome."""
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def scheduled(host: str, port: int, requests: Sequence[bytes], offsets: Sequence[float],
                    max_connections: int = 512) -> list[Answer]:
    """Open loop: request ``i`` (``requests`` in turn) sent at ``offsets[i]`` s whatever the answers, on up to
    ``max_connections`` keep-alive connections; every answer, in the order sent."""
    idle: list[Connection] = []
    sem = asyncio.Semaphore(max_connections)

    async def one(request: bytes) -> Answer:
        async with sem:
            conn = idle.pop() if idle else Connection(host, port)
            answer = await conn.send(request)
            idle.append(conn)
            return answer

    tasks = []
    t0 = time.monotonic()
    for i, at in enumerate(offsets):
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        tasks.append(asyncio.create_task(one(requests[i % len(requests)])))
    answers = list(await asyncio.gather(*tasks))
    for c in idle:
        c.close()
    return answers


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop when it is installed (a lighter client), else asyncio's loop."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro())  # type: ignore[arg-type]
