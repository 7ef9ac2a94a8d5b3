"""The one request protocol every route calls: admit -> pre -> run -> post -> release.

``/classify`` and KServe v2 ``infer`` both go through an ``Engine``: admission first (an overloaded
model sheds a request before it costs any CPU: 503 + Retry-After), then the model's pre step for each
image on the preprocessing pool, the dynamic batcher, the post step (softmax, top-k, labels), and the
reserved queue room released on every path. Routes parse and render; they never touch a batcher.

With ``--processes 1`` the engine lives in the HTTP process and this object is called directly.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.engine.instance import ModelInstance
from service.engine.manager import ModelManager
from service.engine.pipeline import post
from service.errors import BadImage, ServiceError
from service.metrics import Metrics

#: one image's top-k: ``{"index", "label", "score"}`` per class, best first
Predictions = list[dict[str, object]]


@dataclass
class Classified:
    """One classify call's answer: per image (in the order sent) its predictions or its own error."""

    results: list[Predictions | ServiceError]
    queue_s: float = 0.0
    preprocess_s: float = 0.0
    compute_s: float = 0.0


def image_error(err: BaseException) -> ServiceError:
    """An image's own failure as the error its caller gets (an unexpected decoder error is a bad image)."""
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, Exception):
        return BadImage(f"could not be processed: {type(err).__name__}: {err}")
    raise err  # CancelledError, KeyboardInterrupt: not an image's fault


class Engine:
    def __init__(self, manager: ModelManager, pool: Executor, metrics: Metrics) -> None:
        self.manager = manager
        self.pool = pool
        self.metrics = metrics

    def default_model(self) -> str:
        return self.manager.default_model()

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (a metric label may name it; others are ``_unknown``)."""
        return name in self.manager.states

    def model(self, name: str | None, version: str | None) -> ModelInstance:
        """The instance serving ``name`` (default model when None) at ``version`` (latest when None) now."""
        return self.manager.get(name or self.manager.default_model(), version)

    async def classify(self, inst: ModelInstance, images: list[bytes], top_k: int, deadline: float) -> Classified:
        """Each image's top-k, or the errors of the images that could not be decoded in their places
        (then nothing is run: the request is answered with the first one, 400 naming the image)."""
        if not images:
            return Classified([])
        m = self.metrics
        inst.batcher.admit(len(images), deadline)
        submitted = False
        try:
            t_pre = time.monotonic()
            loop = asyncio.get_running_loop()
            jobs = [loop.run_in_executor(self.pool, inst.pipeline.pre, data) for data in images]
            outcome = await asyncio.gather(*jobs, return_exceptions=True)
            preprocess_s = time.monotonic() - t_pre
            m.child(m.preprocess_duration, inst.name).observe(preprocess_s)
            failed = [res for res in outcome if isinstance(res, BaseException)]
            if failed:
                return Classified([image_error(r) if isinstance(r, BaseException) else [] for r in outcome],
                                  preprocess_s=preprocess_s)
            submitted = True
            answers = await inst.batcher.run_each(list(outcome), deadline, admitted=True)
        finally:
            if not submitted:
                inst.batcher.release(len(images))
        m.child(m.queue_depth, inst.name).set(inst.batcher.queue_depth)
        results: list[Predictions | ServiceError] = []
        done = [res for res in answers if not isinstance(res, BaseException)]
        queue_s = compute_s = 0.0
        preds = iter(post([res[0] for res in done], top_k))
        for res in answers:
            if isinstance(res, BaseException):  # decoding on the device failed for this image alone
                results.append(image_error(res))
                continue
            results.append([{"index": j, "label": inst.labels[j], "score": round(p, 6)} for j, p in next(preds)])
            queue_s, compute_s = max(queue_s, res[1]), max(compute_s, res[2])
        return Classified(results, queue_s, preprocess_s, compute_s)

    async def infer(self, inst: ModelInstance, batch: np.ndarray, deadline: float) -> np.ndarray:
        """The (N, C) logits of a batch of model inputs, through admission and the dynamic batcher."""
        inst.batcher.admit(len(batch), deadline)
        rows = await inst.batcher.run(list(batch), deadline, admitted=True)
        return np.stack([r[0] for r in rows]).astype(np.float32, copy=False)
