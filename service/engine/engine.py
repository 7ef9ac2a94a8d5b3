"""The one request protocol every route calls: admit -> pre -> run -> post -> release.

``/classify`` and KServe v2 ``infer`` both go through an ``Engine``: admission first (an overloaded
model sheds a request before it costs any CPU: 503 + Retry-After), then the model's pre step for each
image on the preprocessing pool, the dynamic batcher, the post step (softmax, top-k, labels), and the
reserved queue room released on every path. Routes parse and render; they never touch a batcher.

With ``--processes 1`` the engine lives in the HTTP process and this object is called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from service.engine.admission import Admission
from service.engine.catalog import Classified, Predictions, ServedModel, image_error
from service.engine.instance import ModelInstance
from service.engine.manager import ModelManager
from service.engine.scores import predictions
from service.engine.statistics import ModelStat, Statistics
from service.errors import ANSWERABLE, DeadlineExceeded, ModelNotFound, ModelNotReady, ServiceError
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

    async def describe(self, name: str) -> dict[str, Any]:
        m = self.manager
        if name not in m.names():
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(m.names()) or 'none'}")
        instances = m.instances(name)
        state = m.states.get(name, "unknown")
        if not instances:
            out: dict[str, object] = {"name": name, "state": state, "versions": []}
            if name in m.fallbacks:
                out["served_by"] = m.fallbacks[name]
            return out
        latest = instances[-1].describe()
        latest["state"] = state
        latest["versions"] = [str(i.version) for i in instances]
        if name in m.routes:  # --runtime auto: a variant on a better runtime serves this name
            latest["served_by"], latest["route"] = m.routes[name]
        return latest

    async def load(self, name: str) -> dict[str, Any]:
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

    # -- the request protocol --------------------------------------------------------------------
    async def classify(self, model: ServedModel, images: list[bytes], top_k: int, deadline: float) -> Classified:
        """Each image's top-k, or the errors of the images that could not be decoded in their places
        (then nothing is run: the request is answered with the first one, 400 naming the image)."""
        inst = _instance(model)
        if not images:
            return Classified([])
        admitted = inst.batcher.admit(len(images), deadline)
        submitted = False
        try:
            t_pre = time.monotonic()
            loop = asyncio.get_running_loop()
            jobs = [loop.run_in_executor(self.pool, inst.pipeline.pre, data) for data in images]
            outcome = await asyncio.gather(*jobs, return_exceptions=True)
            preprocess_s = time.monotonic() - t_pre
            self.metrics.child(self.metrics.preprocess_duration, inst.name).observe(preprocess_s)
            if any(isinstance(res, BaseException) for res in outcome):
                self.stats.record(inst.name, inst.version, False, time.monotonic() - admitted.at)
                return Classified([image_error(r) if isinstance(r, BaseException) else [] for r in outcome],
                                  preprocess_s=preprocess_s)
            submitted = True
            done = await self.run_admitted(inst, list(outcome), top_k, deadline, admitted)
        finally:
            if not submitted:
                inst.batcher.release(len(images))
        done.preprocess_s = preprocess_s
        return done

    async def run_admitted(self, inst: ModelInstance, payloads: list[Any], top_k: int,
                           deadline: float, admitted: Admission | bool = True) -> Classified:
        """run -> post for payloads already admitted (``admitted``: what ``inst.batcher.admit`` returned)
        and preprocessed."""
        with self._finished(inst, admitted):
            answers = await inst.batcher.run_each(payloads, deadline, admitted=admitted)
        self.metrics.child(self.metrics.queue_depth, inst.name).set(inst.batcher.queue_depth)
        results: list[Predictions | ServiceError] = []
        done = [res for res in answers if not isinstance(res, BaseException)]
        queue_s = compute_s = 0.0
        preds = iter(predictions([res[0] for res in done], top_k, inst.labels))
        for res in answers:
            if isinstance(res, BaseException):  # decoding on the device failed for this image alone
                results.append(image_error(res))
                continue
            results.append(next(preds))
            queue_s, compute_s = max(queue_s, res[1]), max(compute_s, res[2])
        return Classified(results, queue_s, 0.0, compute_s)

    async def infer(self, model: ServedModel, batch: np.ndarray, deadline: float) -> np.ndarray:
        """The (N, C) logits of a batch of model inputs, through admission and the dynamic batcher."""
        inst = _instance(model)
        admitted = inst.batcher.admit(len(batch), deadline, decodes=False)
        with self._finished(inst, admitted):
            rows = await inst.batcher.run(list(batch), deadline, admitted=admitted)
        return np.stack([r[0] for r in rows]).astype(np.float32, copy=False)

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
