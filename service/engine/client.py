"""The one way every protocol reaches the engine: ``EngineClient``.

``/classify``, KServe v2 over HTTP and KServe v2 over gRPC each parse their request, make one call here
and render the answer. The client owns what used to be written once per protocol: resolving the model
(after catching up with what the engine serves: ``Transport.sync``), the result cache, per-image error
naming, the image counters, readiness, and each request's bookkeeping (``track``: the status, the
duration and the metrics' labels, whatever the protocol).

Under it one ``Transport``, chosen by ``--processes``: ``service.engine.engine.Engine`` in this process
(``--processes 1``, no IPC), or ``service.engine.remote.RemoteEngine``, the engine process over its Unix
socket and shared memory. Where images are decoded is the transport's business (``--ipc-payload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.config import Settings
from service.engine.catalog import ServedModel, image_error
from service.engine.description import ModelDescription
from service.engine.result_cache import ResultCache
from service.engine.scores import Predictions, predictions
from service.engine.statistics import ModelStat
from service.engine.transport import Ran, Transport
from service.errors import ANSWERABLE, Answerable, ServiceError, as_service_error
from service.metrics import Metrics
from service.runtimes.registry import require


@dataclass
class Tracked:
    """One request as the metrics count it; the protocol fills in the model once it is resolved."""

    name: str
    protocol: str
    version: str = "-"
    #: the HTTP status it was answered with (gRPC's too: the status it would have had over HTTP)
    status: str = ""
    code: str = ""
    started: float = field(default_factory=time.monotonic)

    def served_by(self, model: ServedModel) -> None:
        self.name, self.version = model.name, str(model.version)

    def failed(self, e: Answerable) -> None:
        """Answered with ``e`` (a protocol that renders its errors itself says so here)."""
        err = as_service_error(e)
        self.status, self.code = str(err.status), err.code


@dataclass
class Answer:
    """A classify call's answer: each image's top-k (in the order sent) and where the time went."""

    rows: list[Predictions]
    queue_s: float = 0.0
    preprocess_s: float = 0.0
    compute_s: float = 0.0


#: the place of an image that was not run because another image of its request could not be decoded
_NOT_RUN = np.empty(0, dtype=np.float32)


def _named(err: ServiceError, i: int, filename: str | None) -> ServiceError:
    """An image's own error, named by its index (and file name) in the request."""
    err.message = f"image {i}" + (f" ({filename})" if filename else "") + f": {err.message}"
    return err


class EngineClient:
    """Every protocol's engine: one per front end process."""

    def __init__(self, settings: Settings, metrics: Metrics, transport: Transport | None = None,
                 pool: ThreadPoolExecutor | None = None) -> None:
        """``transport``: built from ``settings`` on first use when None (``build_transport``); ``pool``:
        the threads of the pre step (made on first use when None). A runtime the settings ask for that
        cannot run here (``--runtime openvino`` without OpenVINO) fails here, at start, with the reason."""
        require(settings.runtime)
        self.settings, self.metrics = settings, metrics
        self.cache = ResultCache(settings.cache_size)
        #: SIGTERM: readiness turns 503 at once while in-flight requests finish
        self.draining = False
        self._pool = pool
        self._transport = transport

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def pool(self) -> ThreadPoolExecutor:
        """The threads that decode and parse request bodies (``--workers``): never the event loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="preprocess")
        return self._pool

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = build_transport(self.settings, self.pool, self.metrics)
        return self._transport

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- what is served --------------------------------------------------------------------------
    async def sync(self) -> None:
        """Catch up with what the engine serves now (before a listing; ``model`` does it itself)."""
        await self.transport.sync()

    async def model(self, name: str | None, version: str | None) -> ServedModel:
        """The version serving ``name`` (the default model when None) at ``version`` (latest when None)
        now: 404 unknown, 503 not ready."""
        t = self.transport
        await t.sync()
        return t.model(name or t.default_model(), version)

    def knows(self, name: str) -> bool:
        return self._transport is not None and self._transport.knows(name)

    def readiness(self) -> tuple[bool, str]:
        """Ready, or why not: draining, or what the engine says (HTTP's and gRPC's health alike)."""
        if self.draining:
            return False, "shutting down"
        pending = self.transport.not_ready()
        if pending:
            return False, "; ".join(s if n == "*" else f"{n}: {s}" for n, s in sorted(pending.items()))
        return True, "ready"

    def versions(self, name: str) -> list[int]:
        return self.transport.versions(name)

    def weights(self) -> dict[str, str]:
        return self.transport.weights()

    def default_model(self) -> str | None:
        """The default model's name, or None when nothing is served yet (or the engine is down)."""
        try:
            return self.transport.default_model()
        except ServiceError:
            return None

    async def describe(self, name: str) -> ModelDescription:
        return await self.transport.describe(name)

    async def describe_all(self) -> list[ModelDescription]:
        return [await self.describe(n) for n in self.transport.names()]

    def refresh_gauges(self) -> None:
        self.transport.refresh_gauges()

    async def statistics(self) -> list[ModelStat]:
        """What the engine ran, per model version (the whole service's, with ``--processes N`` too)."""
        return await self.transport.statistics()

    # -- model management ------------------------------------------------------------------------
    async def load(self, name: str) -> ModelDescription:
        """(Re)load ``name``; results cached under its previous load are never answered again (their key
        names the load) and are dropped here to free the room."""
        described = await self.transport.load(name)
        self.cache.drop_model(name)
        return described

    async def unload(self, name: str) -> None:
        await self.transport.unload(name)
        self.cache.drop_model(name)

    # -- inference: admit -> pre -> run -> post -> release, once for every protocol and transport ----
    async def logits(self, model: ServedModel, images: list[bytes], deadline: float) -> Ran:
        """Each image's logits row, or the errors of the images that could not be decoded in their places
        (then nothing is run). Admission comes first: an overloaded model sheds a request before it costs
        any CPU (503 + Retry-After); then the pre step (here, or in the engine: the transport says where),
        the run, and the reserved room given back on every path that does not run."""
        if not images:
            return Ran([])
        t = self.transport
        pre = t.pre_step(model)
        ticket = await t.admit(model, len(images), deadline, decodes=pre is not None)
        submitted = False
        try:
            payloads: list[Any] = list(images)
            preprocess_s = 0.0
            if pre is not None:
                t0 = time.monotonic()
                loop = asyncio.get_running_loop()
                outcome = await asyncio.gather(*(loop.run_in_executor(self.pool, pre, d) for d in images),
                                               return_exceptions=True)
                preprocess_s = time.monotonic() - t0
                self.metrics.child(self.metrics.preprocess_duration, model.name).observe(preprocess_s)
                if any(isinstance(r, BaseException) for r in outcome):
                    return Ran([image_error(r) if isinstance(r, BaseException) else _NOT_RUN for r in outcome],
                               preprocess_s=preprocess_s)
                payloads = list(outcome)
            submitted = True
            ran = await t.run(ticket, payloads)
        finally:
            if not submitted:
                t.release(ticket)
        ran.preprocess_s += preprocess_s
        return ran

    async def classify(self, model: ServedModel, images: list[bytes], top_k: int, deadline: float,
                       filenames: list[str | None] | None = None) -> Answer:
        """Each image's top-k softmax probabilities (``service.engine.scores``), through the result cache
        and the engine; the first image that cannot be decoded fails the request, named by its index (and
        file name)."""
        cache, metrics = self.cache, self.metrics
        names = filenames or [None] * len(images)
        rows: list[Predictions | None] = [None] * len(images)
        keys = [cache.key(data, model, top_k) for data in images] if cache.enabled else []
        todo = list(range(len(images)))
        if cache.enabled:
            todo = []
            for i, k in enumerate(keys):
                rows[i] = cache.get(k)
                metrics.child(metrics.cache, model.name, "hit" if rows[i] is not None else "miss").inc()
                if rows[i] is None:
                    todo.append(i)
        ran = await self.logits(model, [images[i] for i in todo], deadline)
        logits: list[np.ndarray] = []
        for i, row in zip(todo, ran.rows, strict=True):
            if isinstance(row, ServiceError):
                raise _named(row, i, names[i])
            logits.append(row)
        for i, top in zip(todo, predictions(logits, top_k, model.labels), strict=True):
            rows[i] = top
            if cache.enabled:
                cache.put(keys[i], top)
        metrics.child(metrics.images, model.name, str(model.version)).inc(len(images))
        return Answer([r for r in rows if r is not None], ran.queue_s, ran.preprocess_s, ran.compute_s)

    async def infer(self, model: ServedModel, batch: np.ndarray, deadline: float) -> np.ndarray:
        """The (N, C) logits of a batch of model inputs: admitted (no pre step), run."""
        t = self.transport
        ticket = await t.admit(model, len(batch), deadline, decodes=False)
        ran = await t.run(ticket, list(batch))
        logits: list[np.ndarray] = []
        for row in ran.rows:
            if isinstance(row, ServiceError):
                raise row
            logits.append(row)
        self.metrics.child(self.metrics.images, model.name, str(model.version)).inc(len(batch))
        return np.stack(logits).astype(np.float32, copy=False)

    # -- bookkeeping -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def track(self, name: str, protocol: str = "http") -> Iterator[Tracked]:
        """Count one request (status, duration, model) in the request metrics, whatever it ends with."""
        rec = Tracked(name, protocol)
        try:
            yield rec
            rec.status = rec.status or "200"
        except ANSWERABLE as e:
            rec.failed(e)
            raise
        finally:
            self.metrics.request_done(rec.name, rec.version, rec.status or "500", time.monotonic() - rec.started,
                                      self.knows(rec.name), rec.code, protocol=rec.protocol)


def build_transport(settings: Settings, pool: ThreadPoolExecutor, metrics: Metrics) -> Transport:
    """The engine process of ``--processes N`` (whose socket the supervisor names in ``ipc_dir``), else
    an engine in this process. Imported here, lazily: a front end never loads the engine's model code."""
    if settings.ipc_dir:
        from service.engine.remote import RemoteEngine

        return RemoteEngine(settings, pool, metrics)
    from service.engine.engine import Engine
    from service.engine.manager import ModelManager

    return Engine(ModelManager(settings, metrics), pool, metrics)
