"""A front end's engine: the engine process of ``--processes N``, reached over its Unix socket.

``RemoteEngine`` is the engine client's socket transport (``service.engine.client.Transport``), as the
in-process ``Engine`` is its other: protocols cannot tell them apart. It keeps a copy of the engine's
catalog (fetched again when the engine's served set changes: ``service.engine.generation``; polled every
``POLL_S`` for readiness) to resolve models and validate requests without a round trip; images go through
this front end's shared memory arena. For a model whose images are decoded on the CPU the front end
decodes and preprocesses them itself (the front ends decode in parallel, with no GIL shared with the
engine) after the engine admitted the request; for a GPU-decode model it sends the JPEG bytes.

When the engine's connection drops (the engine died), every request in flight fails at once with 503
``engine_unavailable``, readiness turns 503 with the reason, and the connection is retried until the
supervisor's new engine answers; the front end itself keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from modelrepo.image_preprocess import Normalizer, preprocess
from service.config import Settings
from service.engine import wire
from service.engine.arena import Arena
from service.engine.catalog import Catalog, ModelView, ServedModel
from service.engine.description import ModelDescription
from service.engine.generation import GenerationCell
from service.engine.statistics import ModelStat
from service.engine.transport import Ran, Ticket
from service.errors import ConfigError, EngineUnavailable, ModelNotFound, ModelNotReady, RemoteError, ServiceError
from service.metrics import Metrics

logger = logging.getLogger("service.http")

POLL_S = 0.25
A = TypeVar("A", bound=wire.Answer)
RECONNECT_S = 0.05


class RemoteEngine:
    def __init__(self, settings: Settings, pool: Executor, metrics: Metrics) -> None:
        assert settings.ipc_dir
        self.settings, self.pool, self.metrics = settings, pool, metrics
        self.path = wire.socket_path(settings.ipc_dir)
        path = Path(settings.ipc_dir) / f"frontend-{os.getpid()}.arena"
        try:
            self.arena = Arena(path, settings.ipc_shm_mb << 20)
        except OSError as e:
            raise ConfigError(f"cannot reserve {settings.ipc_shm_mb} MiB of shared memory at {path}: {e}; "
                              "lower --ipc-shm-mb or give the container more shared memory") from e
        self.catalog = Catalog()
        #: the engine's served-set generation, and the value it had when ``catalog`` was fetched
        self.cell = GenerationCell(settings.ipc_dir)
        self._synced: int | None = None
        self._syncing: asyncio.Lock | None = None
        self.down = "connecting to the engine process"
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        #: request id -> (the caller's future, the arena regions its images hold until the reply)
        self._pending: dict[int, tuple[asyncio.Future[wire.Reply], list[tuple[int, int]]]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pre: dict[tuple[str, int], Any] = {}

    # -- connection --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (retrying while the engine starts) and wait until it has loaded its models."""
        self._task = asyncio.get_running_loop().create_task(self._maintain())
        await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.arena.close()
        self.cell.close()

    async def sync(self) -> None:
        """Fetch the catalog again when the engine's served set changed since it was fetched (a memory
        read per request; one round trip after a change), so no answer, cached or not, comes from a
        model the engine no longer serves as it was."""
        if self.down or self.cell.read() == self._synced:
            return
        if self._syncing is None:
            self._syncing = asyncio.Lock()
        async with self._syncing:  # concurrent requests share one fetch
            if self.cell.read() != self._synced:
                await self._fetch_catalog()

    async def _fetch_catalog(self) -> None:
        seen = self.cell.read()  # read first: a change during the fetch makes the next request fetch again
        self.catalog = Catalog.parse(await self._call("catalog", wire.CatalogData))
        self._synced = seen
        self._pre.clear()

    async def _maintain(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=wire.MAX_FRAME)
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(RECONNECT_S)
                continue
            writer.write(wire.encode(wire.Hello(f"pid {os.getpid()}", str(self.arena.path), self.arena.size)))
            self._writer = writer
            poller = asyncio.get_running_loop().create_task(self._poll())
            try:
                await self._read(reader)
            finally:
                poller.cancel()
                self._writer = None
                writer.close()
                self._lost()

    def _lost(self) -> None:
        was_up = not self.down
        self.down = "the engine process is down (the supervisor restarts it)"
        failed = 0
        for fut, regions in self._pending.values():
            for off, size in regions:
                self.arena.free(off, size)
            if not fut.done():
                fut.set_exception(EngineUnavailable(f"{self.down}; retry after the Retry-After delay"))
                failed += 1
        self._pending.clear()
        self.catalog = Catalog()
        self._synced = None
        if was_up:
            logger.error("lost the engine process: %d request(s) in flight answered 503; reconnecting", failed)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await wire.read(reader)
                if not isinstance(msg, wire.Reply):
                    continue
                fut, regions = self._pending.pop(msg.id, (None, []))
                for off, size in regions:
                    self.arena.free(off, size)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the engine went away
        except (ValueError, msgspec.DecodeError) as e:  # a frame this side cannot read: start afresh
            logger.error("unreadable message from the engine process (%s): reconnecting", e)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(ServiceError):
                st = await self._call("status", wire.Status)
                if st.gen != self.catalog.gen:
                    await self._fetch_catalog()
                else:
                    self.catalog.not_ready, self.catalog.started = st.not_ready, st.started
                if self.down:
                    logger.info("connected to the engine process (%s)", self.path)
                self.down = ""
                if self.catalog.started:
                    self._ready.set()
            await asyncio.sleep(POLL_S)

    async def _request(self, msg: wire.Message, regions: list[tuple[int, int]] | None = None) -> wire.Reply:
        writer = self._writer
        if writer is None or self.down and not isinstance(msg, wire.Call):
            for off, size in regions or []:
                self.arena.free(off, size)
            raise EngineUnavailable(f"{self.down or 'the engine process is not connected'}; retry shortly")
        fut: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        rid = getattr(msg, "id", 0)
        self._pending[rid] = (fut, regions or [])
        writer.write(wire.encode(msg))
        await writer.drain()
        reply = await fut
        if reply.error is not None:
            raise wire.raised(reply.error)
        return reply

    async def _call(self, op: wire.Op, kind: type[A], name: str = "") -> A:
        """The engine's answer to ``op``, which must be a ``kind`` (else the two sides do not speak alike)."""
        ok = (await self._request(wire.Call(next(self._ids), op, name))).ok
        if not isinstance(ok, kind):
            raise RemoteError(500, "internal_error", f"the engine answered {op!r} with {type(ok).__name__}, "
                              f"not {kind.__name__}: front end and engine are different versions?")
        return ok

    def _send(self, msg: wire.Message) -> None:
        if self._writer is not None:
            self._writer.write(wire.encode(msg))

    # -- what routes read ----------------------------------------------------------------------
    def default_model(self) -> str:
        if self.down:
            raise EngineUnavailable(f"{self.down}; retry shortly")
        if self.catalog.default is None:
            if not self.catalog.started:
                raise ModelNotReady("the engine process is loading its models; retry shortly", retry_after_s=2)
            raise ModelNotFound("no model is served: export one into the repository and load it")
        return self.catalog.default

    def knows(self, name: str) -> bool:
        return name in self.catalog.states

    def model(self, name: str | None, version: str | None) -> ModelView:
        if self.down:
            raise EngineUnavailable(f"{self.down}; retry shortly")
        name = name or self.default_model()
        try:
            view = self.catalog.get(name, version)
        except ModelNotFound:
            if self.catalog.started:
                raise
            raise ModelNotReady("the engine process is loading its models; retry shortly", retry_after_s=2) from None
        return dataclasses.replace(view, requested=(name, version))

    def versions(self, name: str) -> list[int]:
        return sorted(self.catalog.loaded.get(name, {}))

    def not_ready(self) -> dict[str, str]:
        if self.down:
            return {"*": self.down}
        return {"*": "loading models"} if not self.catalog.started else dict(self.catalog.not_ready)

    def names(self) -> list[str]:
        return self.catalog.names()

    def weights(self) -> dict[str, str]:
        return {n: vs[max(vs)].weights for n, vs in self.catalog.loaded.items() if vs}

    async def statistics(self) -> list[ModelStat]:
        """The engine process's: every front end's requests."""
        return (await self._call("statistics", wire.Stats)).models

    async def describe(self, name: str) -> ModelDescription:
        return (await self._call("describe", wire.Described, name)).model

    async def load(self, name: str) -> ModelDescription:
        out = await self._call("load", wire.Described, name)
        await self._fetch_catalog()
        return out.model

    async def unload(self, name: str) -> None:
        await self._request(wire.Call(next(self._ids), "unload", name))
        await self._fetch_catalog()

    def refresh_gauges(self) -> None:
        """The engine process refreshes its queue-depth gauges when polled; nothing to do here."""

    # -- the request protocol --------------------------------------------------------------------
    def _blobs(self, payloads: list[Any]) -> tuple[list[wire.Blob], list[tuple[int, int]]]:
        """Each payload into the arena (inline when it is full right now), and the regions taken."""
        blobs, regions = [], []
        for p in payloads:
            shape = tuple(p.shape) if isinstance(p, np.ndarray) else ()
            nbytes = p.nbytes if isinstance(p, np.ndarray) else len(p)
            off = self.arena.put(p)
            if off is None:
                data = p.astype(np.float32, copy=False).tobytes() if shape else bytes(p)
                blobs.append(wire.Blob(0, nbytes, data, shape))
            else:
                blobs.append(wire.Blob(off, nbytes, None, shape))
                regions.append((off, nbytes))
        return blobs, regions

    def _pixels(self, view: ModelView) -> bool:
        mode = self.settings.ipc_payload
        return mode == "pixels" or (mode == "auto" and view.decode == "cpu")

    def _preprocessor(self, view: ModelView) -> Any:
        key = (view.name, view.version)
        if key not in self._pre:
            pp = view.preprocess
            self._pre[key] = partial(preprocess, pp=pp, max_pixels=self.settings.max_image_pixels,
                                     normalizer=Normalizer(pp))
        return self._pre[key]

    # -- the request's steps (the protocol is the client's: service.engine.client) -----------------
    def pre_step(self, model: ServedModel) -> Callable[[bytes], object] | None:
        """Pixels mode (``--ipc-payload``, a CPU-decoded model by default): this front end decodes and
        preprocesses, after an ``Admit``; bytes mode: None, the engine admits on the run's arrival and
        decodes in its batch (a GPU-decode model)."""
        view = _view(model)
        return self._preprocessor(view) if self._pixels(view) else None

    async def admit(self, model: ServedModel, n: int, deadline: float, decodes: bool) -> Ticket:
        view = _view(model)
        if not decodes:  # nothing costs CPU here before the engine admits it with the run
            return Ticket(view, n, deadline)
        rid = next(self._ids)
        name, version = view.requested
        await self._request(wire.Admit(rid, name, version, n, deadline))
        return Ticket(view, n, deadline, rid)

    def release(self, ticket: Ticket) -> None:
        if isinstance(ticket.handle, int):
            self._send(wire.Release(ticket.handle))

    async def run(self, ticket: Ticket, payloads: list[Any]) -> Ran:
        view = _view(ticket.model)
        name, version = view.requested
        admitted = isinstance(ticket.handle, int)
        rid = ticket.handle if isinstance(ticket.handle, int) else next(self._ids)
        blobs, regions = self._blobs(payloads)
        reply = await self._request(wire.Run(rid, name, version, ticket.deadline, blobs, admitted), regions)
        return _ran(reply)


def _view(model: ServedModel) -> ModelView:
    """A front end's models are views of its catalog (``RemoteEngine.model`` returns nothing else)."""
    if not isinstance(model, ModelView):
        raise TypeError(f"the socket transport sends requests for its catalog's ModelView, got {type(model).__name__}")
    return model


def _ran(reply: wire.Reply) -> Ran:
    ok = reply.ok
    if not isinstance(ok, wire.Rows):
        raise RemoteError(500, "internal_error", f"the engine answered a run with {type(ok).__name__}")
    errors = reply.image_errors or []
    flat = np.frombuffer(ok.data, dtype="<f4")
    table = flat.reshape(-1, ok.classes) if ok.classes else np.empty((len(errors), 0), np.float32)
    rows: list[np.ndarray | ServiceError] = list(table)
    for i, f in enumerate(errors):
        if f is not None:
            rows[i] = wire.raised(f)
    return Ran(rows, ok.queue_s, ok.compute_s, ok.preprocess_s)
