"""The engine process of ``--processes N`` (docs/guides/process-model.md): the models, batchers, instance pools and
runtimes of one device, serving the front ends over a Unix socket (``service.engine.wire``).

Each front end connects, says where its shared memory arena is (``Hello``) and then sends requests;
each runs as its own task and is answered on its connection when done. An ``Admit`` reserves queue
room before the front end decodes (deadline-aware admission decided here, rendered there as 503 +
Retry-After); the ``Run`` that follows runs under that reservation, and a front end that goes
away gives back whatever it still held. ``status`` and ``catalog`` calls tell the front ends what is
served and whether it is ready; ``load``/``unload``/``describe`` forward the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.config import format_config
from service.config import Settings
from service.engine import wire
from service.engine.arena import ArenaView
from service.engine.client import EngineClient
from service.engine.engine import Engine
from service.engine.generation import GenerationCell
from service.engine.instance import ModelInstance
from service.engine.manager import ModelManager
from service.engine.transport import Ran, Ticket
from service.errors import ANSWERABLE, BadRequest, ServiceError
from service.metrics import Metrics

logger = logging.getLogger("service.engine")

def view_data(inst: ModelInstance) -> wire.ViewData:
    pp = inst.preprocess
    return wire.ViewData(
        name=inst.name, version=inst.version, labels=inst.labels, timeout_s=inst.default_timeout_s,
        weights=inst.weights, input_shape=tuple(inst.input_shape), config=format_config(inst.config),
        platform=inst.platform, decode=inst.decode, load_id=inst.load_id,
        preprocess=wire.PreprocessData(pp.resize_shorter, pp.crop, pp.mean, pp.std, pp.interpolation),
    )


def status(manager: ModelManager, started: bool) -> wire.Status:
    """The small part a front end polls: readiness and the generation of the full catalog (the manager's
    count of changes: a load, unload, failure or reroute, the same count the shared cell carries)."""
    return wire.Status(str(manager.changes), started, manager.not_ready())


def snapshot(manager: ModelManager, started: bool) -> wire.CatalogData:
    try:
        default: str | None = manager.default_model()
    except Exception:  # noqa: BLE001 - no model at all: requests get the manager's 404 through lookup
        default = None
    return wire.CatalogData(
        status=status(manager, started), default=default, states=dict(manager.states), routes=dict(manager.routes),
        fallbacks=dict(manager.fallbacks),
        loaded={n: [view_data(i) for i in manager.instances(n)] for n in manager.names()},
    )


def _rows(rid: int, ran: Ran) -> wire.Reply:
    ok = [r for r in ran.rows if isinstance(r, np.ndarray)]
    classes = ok[0].shape[-1] if ok else 0
    rows = [r if isinstance(r, np.ndarray) else np.zeros(classes, np.float32) for r in ran.rows]
    data = np.stack(rows).astype("<f4", copy=False).tobytes() if rows and classes else b""
    errors = [wire.failure(r) if isinstance(r, ServiceError) else None for r in ran.rows]
    return wire.Reply(rid, ok=wire.Rows(data, classes, ran.queue_s, ran.compute_s, ran.preprocess_s),
                      image_errors=errors if any(errors) else None)


class _Connection:
    """One front end: its arena, its admissions, its requests in flight."""

    def __init__(self, engine: Engine, client: EngineClient, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.engine, self.client, self.reader, self.writer = engine, client, reader, writer
        self.view: ArenaView | None = None
        self.admitted: dict[int, Ticket] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.name = "?"

    async def run(self) -> None:
        try:
            hello = await wire.read(self.reader)
            if not isinstance(hello, wire.Hello):
                raise ValueError(f"expected Hello, got {type(hello).__name__}")
            self.name, self.view = hello.frontend, ArenaView(hello.arena, hello.arena_size)
            logger.info("front end %s connected", self.name)
            while True:
                msg = await wire.read(self.reader)
                if isinstance(msg, wire.Admit):
                    self._admit(msg)
                elif isinstance(msg, wire.Release):
                    self._release(msg.id)
                else:
                    task = asyncio.get_running_loop().create_task(self._answer(msg))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end went away (exit, crash): what it held is given back below
        finally:
            await self._close()

    async def _close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for rid in list(self.admitted):
            self._release(rid)
        if self.view is not None:
            self.view.close()
        self.writer.close()
        logger.info("front end %s disconnected", self.name)

    def _send(self, msg: wire.Reply) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(msg))

    def _admit(self, msg: wire.Admit) -> None:
        """Answered at once, in the order the front end sent it (the engine's admit never waits)."""
        try:
            inst = self.engine.model(msg.model, msg.version)
            ticket = self.engine.admit_now(inst, msg.n, msg.deadline, decodes=True)
        except ANSWERABLE as e:
            self._send(wire.Reply(msg.id, error=wire.failure(e)))
            return
        self.admitted[msg.id] = ticket
        self._send(wire.Reply(msg.id, ok=wire.Admitted(inst.name, inst.version)))

    def _release(self, rid: int) -> None:
        ticket = self.admitted.pop(rid, None)
        if ticket is not None:
            self.engine.release(ticket)

    async def _answer(self, msg: wire.Message) -> None:
        rid = getattr(msg, "id", 0)
        try:
            reply = await self._dispatch(msg)
        except ANSWERABLE as e:
            reply = wire.Reply(rid, error=wire.failure(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not the request's fault: answered 500, the engine keeps serving
            logger.exception("engine: %s %s failed", type(msg).__name__, rid)
            reply = wire.Reply(rid, error=wire.Failure(500, "internal_error", f"{type(e).__name__}: {e}"))
        self._send(reply)
        await self.writer.drain()

    def _payload(self, blob: wire.Blob) -> Any:
        assert self.view is not None
        if blob.shape:
            if blob.data is not None:
                return np.frombuffer(blob.data, dtype=np.float32).reshape(blob.shape)
            return self.view.array(blob.offset, blob.shape)
        return blob.data if blob.data is not None else self.view.bytes(blob.offset, blob.size)

    async def _dispatch(self, msg: wire.Message) -> wire.Reply:
        if isinstance(msg, wire.Run):
            return _rows(msg.id, await self._run(msg))
        if isinstance(msg, wire.Call):
            return wire.Reply(msg.id, ok=await self._call(msg))
        raise BadRequest(f"unexpected message {type(msg).__name__}")

    async def _run(self, msg: wire.Run) -> Ran:
        """Admitted pixels run; model inputs are admitted, then run; encoded images take the whole request
        protocol here, through the engine's own client (admit, decode in the engine's pool, run)."""
        e, payloads = self.engine, [self._payload(b) for b in msg.payloads]
        if msg.admitted:
            ticket = self.admitted.pop(msg.id, None)
            if ticket is None:
                raise BadRequest(f"run {msg.id} was not admitted")
            return await e.run(ticket, payloads)
        inst = e.model(msg.model, msg.version)
        if payloads and all(isinstance(p, np.ndarray) for p in payloads):
            return await e.run(await e.admit(inst, len(payloads), msg.deadline, decodes=False), payloads)
        return await self.client.logits(inst, payloads, msg.deadline)

    async def _call(self, msg: wire.Call) -> wire.Answer | None:
        e = self.engine
        if msg.op == "status":
            e.refresh_gauges()  # the front ends poll often: queue depths stay fresh in the merged /metrics
            return status(e.manager, e.started)
        if msg.op == "catalog":
            return snapshot(e.manager, e.started)
        if msg.op == "describe":
            return wire.Described(await e.describe(msg.name))
        if msg.op == "statistics":
            return wire.Stats(e.stats.snapshot())
        if msg.op == "load":
            return wire.Described(await e.load(msg.name))
        await e.unload(msg.name)  # the last op Call allows
        return None


async def serve_engine(settings: Settings, path: Path, stop: asyncio.Event) -> None:
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="preprocess")
    manager = ModelManager(settings, metrics)
    engine = Engine(manager, pool, metrics)
    #: encoded images sent to the engine take the request protocol here, over the in-process transport
    client = EngineClient(settings.model_copy(update={"cache_size": 0}), metrics, transport=engine, pool=pool)
    cell = GenerationCell(path.parent)
    cell.write(manager.changes)
    manager.on_change.append(cell.write)
    conns: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conns.add(task)
        try:
            await _Connection(engine, client, reader, writer).run()
        finally:
            conns.discard(task)

    server = await asyncio.start_unix_server(accept, path=str(path), limit=wire.MAX_FRAME)
    logger.info("engine process %d serving on %s", os.getpid(), path)
    loader = asyncio.get_running_loop().create_task(engine.start())
    try:
        await stop.wait()
    finally:
        logger.info("engine process %d stopping", os.getpid())
        server.close()
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        for t in list(conns):
            t.cancel()
        await asyncio.gather(*conns, return_exceptions=True)
        await engine.close()
        cell.close()
        pool.shutdown(wait=False, cancel_futures=True)


def run_engine(argv: list[str]) -> None:
    """The engine process (spawned by the supervisor): serve until SIGTERM. SIGINT is the supervisor's
    to handle (a terminal's Ctrl-C reaches every process of the group): the engine stops only once
    the front ends have drained."""
    from service.config import parse_settings
    from service.lifetime import die_with_parent
    from service.logging import configure_logging

    die_with_parent()
    settings = parse_settings(argv)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.ipc_dir:
        raise SystemExit("the engine process needs --ipc-dir (the supervisor of --processes N sets it)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        await serve_engine(settings, path, stop)

    path = wire.socket_path(settings.ipc_dir)
    path.unlink(missing_ok=True)  # a killed engine's socket: the new one takes its place
    try:
        asyncio.run(main())
    finally:
        path.unlink(missing_ok=True)
