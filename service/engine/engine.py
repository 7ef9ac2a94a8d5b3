"""The engine in this process: the engine client's in-process transport (``service.engine.transport``).

It owns the models (``ModelManager``) and offers the request's steps the client sequences: admission
(deadline-aware, per model), the model's pre step, the run through the dynamic batcher, the release of
unused room; and the statistics of what it ran. With ``--processes 1`` the HTTP front end's client calls
it directly; with ``--processes N`` the engine process serves it to the front ends
(``service.engine.process``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import msgspec

from service.engine.admission import Admission
from service.engine.catalog import ServedModel, image_error
from service.engine.description import ModelDescription
from service.engine.instance import ModelInstance
from service.engine.manager import ModelManager
from service.engine.statistics import ModelStat, Statistics
from service.engine.transport import Ran, Ticket
from service.errors import ANSWERABLE, DeadlineExceeded, ModelNotFound, ModelNotReady
from service.metrics import Metrics

logger = logging.getLogger("service.engine")

class Engine:
    """The engine in this process (``--processes 1``; and inside the engine process of ``--processes N``)."""

    def __init__(self, manager: ModelManager, pool: Executor, metrics: Metrics) -> None:
        self.manager = manager
        self.pool = pool
        self.metrics = metrics
        #: the first load of every configured model has been tried (readiness waits for it)
        self.started = False
        #: what it ran, per model version (Triton's ModelStatistics): the whole service's, every front end's
        self.stats = Statistics()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.manager.load_all()
        except ANSWERABLE as e:
            logger.error("model repository: %s", e.message)
        self.started = True
        pending = self.manager.not_ready()
        logger.info("startup complete: %s", f"not ready ({pending})" if pending else "ready")

    async def close(self) -> None:
        await self.manager.close()

    async def sync(self) -> None:
        """In this process the manager is what is served: nothing to catch up with."""

    async def statistics(self) -> list[ModelStat]:
        return self.stats.snapshot()

    # -- what routes read ----------------------------------------------------------------------
    def default_model(self) -> str:
        if not self.started and not self.manager.states:
            raise ModelNotReady("the service is loading its models; retry shortly", retry_after_s=2)
        return self.manager.default_model()

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (a metric label may name it; others are ``_unknown``)."""
        return name in self.manager.states

    def model(self, name: str | None, version: str | None) -> ModelInstance:
        """The instance serving ``name`` (default model when None) at ``version`` (latest when None) now."""
        name = name or self.default_model()
        try:
            return self.manager.get(name, version)
        except ModelNotFound:
            if self.started:
                raise
            raise ModelNotReady("the service is loading its models; retry shortly", retry_after_s=2) from None

    def versions(self, name: str) -> list[int]:
        return [i.version for i in self.manager.instances(name)]

    def not_ready(self) -> dict[str, str]:
        """Why the engine is not ready, per model ({} when it is); before its first load, why too."""
        return self.manager.not_ready() if self.started else {"*": "loading models"}

    def names(self) -> list[str]:
        return self.manager.names()

    def weights(self) -> dict[str, str]:
        """Each served model's ``source.weights`` (latest version): whose predictions mean something."""
        return {n: i[-1].weights for n in self.manager.names() if (i := self.manager.instances(n))}

    async def describe(self, name: str) -> ModelDescription:
        m = self.manager
        if name not in m.names():
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(m.names()) or 'none'}")
        instances = m.instances(name)
        state = m.states.get(name, "unknown")
        if not instances:
            return ModelDescription(name, state, [], served_by=m.fallbacks.get(name))
        served_by, route = m.routes.get(name, (None, None))  # --runtime auto: a variant on a better runtime
        versions = [str(i.version) for i in instances]
        return msgspec.structs.replace(instances[-1].describe(), state=state, versions=versions,
                                       served_by=served_by, route=route)

    async def load(self, name: str) -> ModelDescription:
        await self.manager.load(name)
        return await self.describe(name)

    async def unload(self, name: str) -> None:
        await self.manager.unload(name)

    def refresh_gauges(self) -> None:
        """Queue depths as of now, before /metrics renders."""
        m = self.metrics
        for name in self.manager.names():
            for inst in self.manager.instances(name):
                m.child(m.queue_depth, name).set(inst.batcher.queue_depth)

    # -- the request's steps (the protocol is the client's: service.engine.client) -----------------
    def pre_step(self, model: ServedModel) -> Callable[[bytes], object]:
        """The model's pre step: decode + preprocess (a CUDA model's: the JPEG header's checks)."""
        return _instance(model).pipeline.pre

    async def admit(self, model: ServedModel, n: int, deadline: float, decodes: bool) -> Ticket:
        return self.admit_now(model, n, deadline, decodes)

    def admit_now(self, model: ServedModel, n: int, deadline: float, decodes: bool) -> Ticket:
        """Queue room for ``n`` payloads, deadline-aware (503 + Retry-After when it cannot be had)."""
        inst = _instance(model)
        return Ticket(inst, n, deadline, inst.batcher.admit(n, deadline, decodes))

    def release(self, ticket: Ticket) -> None:
        _instance(ticket.model).batcher.release(ticket.n)

    async def run(self, ticket: Ticket, payloads: list[Any]) -> Ran:
        """Admitted payloads through the dynamic batcher: one logits row each, or its own error."""
        inst = _instance(ticket.model)
        admitted = ticket.handle if isinstance(ticket.handle, Admission) else True
        with self._finished(inst, admitted):
            answers = await inst.batcher.run_each(payloads, ticket.deadline, admitted=admitted)
        self.metrics.child(self.metrics.queue_depth, inst.name).set(inst.batcher.queue_depth)
        done = [a for a in answers if not isinstance(a, BaseException)]
        return Ran([image_error(a) if isinstance(a, BaseException) else a[0] for a in answers],
                   max((a[1] for a in done), default=0.0), max((a[2] for a in done), default=0.0))

    @contextlib.contextmanager
    def _finished(self, inst: ModelInstance, admitted: Admission | bool) -> Iterator[None]:
        """When the run ends: count it in the model's statistics, and observe completion minus admission's
        prediction (also when it is answered 504, a lower bound then; other failures say nothing about
        the estimate)."""
        since = admitted.at if isinstance(admitted, Admission) else time.monotonic()
        try:
            yield
        except DeadlineExceeded:
            self._observe_error(inst, admitted)
            self.stats.record(inst.name, inst.version, False, time.monotonic() - since)
            raise
        except Exception:
            self.stats.record(inst.name, inst.version, False, time.monotonic() - since)
            raise
        self._observe_error(inst, admitted)
        self.stats.record(inst.name, inst.version, True, time.monotonic() - since)

    def _observe_error(self, inst: ModelInstance, admitted: Admission | bool) -> None:
        if isinstance(admitted, Admission):
            error = time.monotonic() - admitted.done_by
            self.metrics.child(self.metrics.estimate_error, inst.name).observe(error)


def _instance(model: ServedModel) -> ModelInstance:
    """The in-process engine's models are its ModelInstances (``Engine.model`` returns nothing else)."""
    if not isinstance(model, ModelInstance):
        raise TypeError(f"the in-process engine runs its own ModelInstance, got {type(model).__name__}")
    return model
