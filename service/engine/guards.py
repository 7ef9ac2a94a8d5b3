"""Output checks on a runtime instance's step: garbage logits fail the batch, never a 200.

A runtime that returns NaN/Inf (a broken engine, an FP16 overflow) or logits of the wrong shape (a
model file that disagrees with its config.pbtxt) would otherwise be softmaxed into confident-looking
nonsense. ``checked(step, num_classes)`` wraps an instance's step (``service.engine.batching.Step``) and
raises ``BadOutput`` instead; the batcher fails that batch's requests with 500 ``inference_failed``
carrying the message, and the next batch serves. Cost: one ``np.isfinite`` over the rows.

``InstanceThread`` is the thread an instance's batches run on: a daemon, so that the batcher's
watchdog can abandon one stuck in a hung runtime without it blocking process exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from service.engine.steps import Step, StepResult


class BadOutput(RuntimeError):
    """The runtime's logits cannot be served (NaN/Inf, or the wrong shape)."""


def check_rows(rows: np.ndarray, expected_rows: int, num_classes: int) -> None:
    """Raise BadOutput unless ``rows`` is ``(expected_rows, num_classes)`` of finite values.

    ``num_classes`` 0 skips the column check (a config without output dims and labels).
    """
    if expected_rows == 0 and rows.shape[0] == 0:
        return  # every item of the batch failed alone (e.g. undecodable JPEGs): nothing to check
    want = f"({expected_rows}, {num_classes or 'C'})"
    if rows.ndim != 2 or rows.shape[0] != expected_rows or (num_classes and rows.shape[1] != num_classes):
        raise BadOutput(
            f"runtime returned logits of shape {tuple(rows.shape)}, expected {want}: the model file "
            "disagrees with its config.pbtxt output dims or the runtime is broken; re-export or reload the model"
        )
    finite = np.isfinite(rows)
    if not finite.all():
        bad = int((~finite.all(axis=1)).sum())
        raise BadOutput(
            f"runtime returned NaN/Inf logits in {bad} of {expected_rows} rows: the model or its precision "
            "is broken (e.g. an FP16 overflow); these results are not served"
        )


def checked(step: Step, num_classes: int) -> Step:
    """``step`` whose rows are checked by ``check_rows`` before any request sees them."""

    def guarded(items: list[Any]) -> StepResult:
        res = step(items)
        check_rows(np.asarray(res.rows), len(items) - len(res.failed), num_classes)
        return res

    return guarded


class InstanceThread(Executor):
    """One daemon thread that runs an instance's batches in order (a runtime instance is never entered by
    two threads at once). A daemon, so that a thread stuck in a hung runtime cannot block process exit."""

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._work.put((fut, fn, args))
        return fut

    def _serve(self) -> None:
        while (job := self._work.get()) is not None:
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._work.put(None)
        if wait:
            self._thread.join()
