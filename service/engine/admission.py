"""Deadline-aware admission: take a request only when it fits the queue and can finish in time.

The batcher calls ``admit`` with what stands between a new request and the device (``Backlog``) and
its cost model; the answer is an ``Admission``, the promise (when the request should be done) that
the request carries to ``submit``, where the pre stage's time teaches the estimate, and to its end,
where the engine observes how far the promise was off (``inference_admission_estimate_error_seconds``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.engine.cost_model import Backlog, CostModel
from service.errors import QueueFull


@dataclass(frozen=True)
class Admission:
    """What admission promised a request: when it should be done, and what it was admitted behind."""

    n: int
    #: monotonic time of the admission
    at: float
    #: the cost model's estimate of the seconds to its result (what the model's error is learnt against)
    estimate_s: float
    #: expected completion (monotonic; the estimate corrected for its recent bias): the actual one minus
    #: this is the error ``inference_admission_estimate_error_seconds`` shows
    done_by: float
    #: images admitted before it that were still being decoded (the pre stage's backlog)
    decoding_ahead: int = 0
    #: whether its images are decoded between admission and ``submit`` (False: model inputs already)
    decodes: bool = True


def admit(name: str, cost: CostModel, backlog: Backlog, limit: int, n: int, deadline: float | None,
          decodes: bool, enforce: bool) -> Admission:
    """The promise for ``n`` more images behind ``backlog``, or QueueFull (503 + Retry-After) when they
    do not fit the ``limit`` images of the queue, or (``enforce``) cannot finish before ``deadline``."""
    now = time.monotonic()
    waiting = backlog.queued + backlog.decoding
    estimate = cost.estimate(backlog, n, decodes)
    eta = cost.expected(estimate)
    if waiting + n > limit:
        raise QueueFull(
            f"model {name!r} queue is full ({waiting} images waiting, limit {limit}); "
            "retry after the Retry-After delay",
            retry_after_s=max(1.0, eta),
        )
    # With nothing ahead the request runs at once whatever the estimate says: its batch refreshes the
    # estimate, so one slow batch (a decoder's first call, a GC pause) cannot lock a model out.
    promise = cost.promise(estimate)
    if enforce and deadline is not None and not backlog.idle and now + promise > deadline:
        raise QueueFull(
            f"model {name!r} cannot finish this request before its deadline "
            f"(predicted {eta * 1000:.0f} ms, {promise * 1000:.0f} ms with the estimate's margin, "
            f"{max(0.0, deadline - now) * 1000:.0f} ms left); "
            "retry later or allow a longer X-Request-Timeout-Ms",
            retry_after_s=eta,
        )
    return Admission(n, now, estimate, now + eta, backlog.decoding, decodes)
