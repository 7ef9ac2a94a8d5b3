"""Dynamic batcher: one asyncio task owns a bounded queue of images and feeds a pool of runtime instances.

A batch closes when it holds ``max_batch_size`` images, reaches a preferred size, or its oldest
image has waited ``max_queue_delay``; with ``dispatch_when_idle`` (CPU runtimes, whose cost grows
linearly with the batch so waiting buys nothing) it also closes at once when the runtime is idle.
While the runtime is busy the next batch keeps growing (it is topped up from the queue the moment
the runtime frees), so under load batches fill by themselves with no polling. Requests whose caller
went away or whose deadline passed are dropped before they reach the runtime. A failing batch
fails only its own members and the loop keeps going.

The batcher knows nothing of runtimes, tensors or HTTP: an *instance* is a step function
``list[payload] -> StepResult`` (the model's collate -> core steps, run on that instance's own
thread), and a payload is whatever the model's pre step produced (a normalised numpy image, or JPEG
bytes a GPU decodes in the batch). With several instances (Triton's ``instance_group.count``) a
batch goes to whichever is idle, so a GPU overlaps batches on separate CUDA streams.

Watchdog (``watchdog_s`` > 0): a batch that runs longer than that on an instance fails its requests
at once (503 ``runtime_unhealthy``), and the instance is retired from the pool: its thread is stuck in
the runtime, so it is never handed another batch (nor closed, nor joined at exit: instance threads are
daemons). ``on_unhealthy(reason)`` tells the owner. With no instance left, admission answers 503
model not ready and whatever is queued fails at once: no caller waits on a hung runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine import admission
from service.engine.admission import Admission
from service.engine.cost_model import OUTLIER_CAP, Backlog, CostModel
from service.engine.guards import InstanceThread
from service.engine.steps import Step, StepResult
from service.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, RuntimeHung

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What one batch cost, reported to metrics."""

    size: int
    compute_s: float
    queue_s: list[float]


@dataclass(eq=False)
class _Item:
    payload: Any
    future: asyncio.Future[tuple[np.ndarray, float, float]]
    enqueued: float
    deadline: float | None


@dataclass
class BatcherConfig:
    max_batch_size: int = 8
    max_queue_delay_s: float = 0.002
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_size: int = 256
    dispatch_when_idle: bool = False


class Batcher:
    def __init__(
        self,
        name: str,
        instances: Step | Sequence[Step],
        config: BatcherConfig,
        on_batch: Callable[[BatchStats], None] | None = None,
        admission_control: bool = True,
        watchdog_s: float = 0.0,
        on_unhealthy: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._steps: list[Step] = [instances] if callable(instances) else list(instances)
        if not self._steps:
            raise ValueError("a batcher needs at least one instance")
        self.config = config
        self._on_batch = on_batch
        self._admission = admission_control
        self.watchdog_s = watchdog_s
        self.on_unhealthy = on_unhealthy
        #: instances retired by the watchdog (indices into _steps): never reused, never closed
        self.retired: set[int] = set()
        #: why the batcher cannot serve at all (every instance retired); None while it can
        self._broken: str | None = None
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        # Idle instances (indices into _steps); _idle is set while at least one is free.
        self._free: deque[int] = deque(range(len(self._steps)))
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending_images = 0
        self._reserved = 0  # admitted images still being decoded, not yet queued
        self._forming: list[_Item] = []  # the batch taken from the queue, not yet on an instance
        self._inflight: dict[int, tuple[float, float]] = {}  # instance -> (batch start, its estimated cost)
        self._freed_at = [0.0] * len(self._steps)  # when each instance last finished a batch
        # One thread per instance: a runtime instance is never entered by two threads at once.
        self._executors = [InstanceThread(f"infer-{name}-{i}") for i in range(len(self._steps))]
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._accepting = False
        self.cost = CostModel()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def drain_and_stop(self) -> None:
        """Refuse new work, finish what is admitted, queued and running, then stop."""
        self._accepting = False
        while self._queue or self._running or self._reserved:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for i, ex in enumerate(self._executors):
            ex.shutdown(wait=i not in self.retired)  # a hung thread is left behind, never joined

    @property
    def queue_depth(self) -> int:
        return self._pending_images

    @property
    def instance_count(self) -> int:
        return len(self._steps)

    def backlog(self) -> Backlog:
        """What stands between a request admitted now and the device."""
        ran = [(time.monotonic() - start, cost) for start, cost in self._inflight.values()]
        slowdown = max([1.0, *(min(OUTLIER_CAP, t / cost) for t, cost in ran if cost > 0)])
        return Backlog(decoding=self._reserved, queued=self._pending_images + len(self._forming),
                       inflight_left=[max(0.0, cost - t) for t, cost in ran], slowdown=slowdown,
                       instances=len(self._steps) - len(self.retired), max_batch=self.config.max_batch_size)

    # -- submission ------------------------------------------------------------------------
    def admit(self, n: int, deadline: float | None, decodes: bool = True) -> Admission:
        """Reserve queue room for ``n`` images before the caller spends CPU decoding them.

        Raises QueueFull (503) when they do not fit, or when the estimate (``backlog`` priced by the
        cost model) says the request would miss its deadline anyway (``service.engine.admission``).
        ``decodes``: the caller decodes the images between this and ``submit`` (False: it holds model
        inputs already). Pair with ``submit(..., admitted=<the Admission>)`` or ``release(n)``.
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name!r} is being unloaded; retry shortly", retry_after_s=1)
        if self._broken is not None:
            raise ModelNotReady(f"model {self.name!r} is not ready ({self._broken}); reload it", retry_after_s=5)
        ticket = admission.admit(self.name, self.cost, self.backlog(), self.config.max_queue_size, n, deadline,
                                 decodes, self._admission)
        self._reserved += n
        return ticket

    def release(self, n: int) -> None:
        """Give back room reserved by ``admit`` for images that will not be submitted."""
        self._reserved -= n
        if not self._accepting:
            self._wakeup.set()

    def submit(
        self, payloads: list[Any], deadline: float | None, admitted: Admission | bool = False
    ) -> list[asyncio.Future]:
        """Enqueue one request's images; returns one future per image (logits row, queue_s, compute_s).

        ``admitted``: the ``Admission`` that ``admit`` returned for them (its time to here teaches the
        estimate what the pre stage costs), or True for room reserved without one. Without it this runs
        ``admit`` first (503 when full or the deadline is hopeless).
        """
        n = len(payloads)
        if not admitted:
            admitted = self.admit(n, deadline, decodes=False)
        self._reserved -= n
        now = time.monotonic()
        if isinstance(admitted, Admission) and admitted.decodes:
            self.cost.observe_pre(admitted.decoding_ahead + n, now - admitted.at)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future] = []
        for t in payloads:
            fut: asyncio.Future[tuple[np.ndarray, float, float]] = loop.create_future()
            futures.append(fut)
            self._queue.append(_Item(t, fut, now, deadline))
        self._pending_images += n
        self._wakeup.set()
        return futures

    async def run(
        self, payloads: list[Any], deadline: float | None, admitted: Admission | bool = False
    ) -> list[tuple[np.ndarray, float, float]]:
        """Submit and wait for every image; 504 when the deadline passes first. Leftovers are cancelled.
        An image that failed alone (StepResult.failed) raises its own error (the first one)."""
        out = await self.run_each(payloads, deadline, admitted)
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out  # type: ignore[return-value]

    async def run_each(
        self, payloads: list[Any], deadline: float | None, admitted: Admission | bool = False
    ) -> list[tuple[np.ndarray, float, float] | BaseException]:
        """Like ``run``, but an image that failed alone gives its error in its place."""
        if not admitted:
            admitted = self.admit(len(payloads), deadline, decodes=False)
        futures = self.submit(payloads, deadline, admitted)
        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            out = list(await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout))
        except TimeoutError as e:
            self._learn(admitted)  # not done at its deadline: a lower bound of the time it needed
            raise DeadlineExceeded(
                f"request deadline passed while queued for model {self.name!r}; the service is overloaded "
                "or X-Request-Timeout-Ms is too short"
            ) from e
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()
                elif not f.cancelled():
                    f.exception()  # retrieved: no "exception was never retrieved" noise
        if not any(isinstance(r, BaseException) for r in out):
            self._learn(admitted)
        return out

    def _learn(self, admitted: Admission | bool) -> None:
        """Teach the cost model how far its estimate for this request was off."""
        if isinstance(admitted, Admission):
            self.cost.observe_outcome(admitted.estimate_s, time.monotonic() - admitted.at)

    # -- the loop --------------------------------------------------------------------------
    def _pop_live(self) -> _Item | None:
        """Next queued item whose caller still waits and whose deadline has not passed."""
        while self._queue:
            item = self._queue.popleft()
            self._pending_images -= 1
            if self._live(item):
                return item
        return None

    def _live(self, item: _Item) -> bool:
        """False for an item whose caller went away or whose deadline passed (failing it with 504)."""
        if item.future.done():  # caller went away (cancelled)
            return False
        now = time.monotonic()
        if item.deadline is not None and now > item.deadline:
            item.future.set_exception(
                DeadlineExceeded(
                    f"request deadline passed after {now - item.enqueued:.3f} s in the queue of model "
                    f"{self.name!r}; the service is overloaded or the timeout too short"
                )
            )
            return False
        return True

    async def _loop(self) -> None:
        cfg = self.config
        preferred = set(cfg.preferred_batch_sizes)
        while True:
            item = self._pop_live()
            if item is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._forming = [item]
            close_at = item.enqueued + cfg.max_queue_delay_s
            # Grow until full, a preferred size, or the oldest image's delay is spent.
            while len(batch) < cfg.max_batch_size and len(batch) not in preferred:
                nxt = self._pop_live()
                if nxt is not None:
                    batch.append(nxt)
                    continue
                remaining = close_at - time.monotonic()
                if remaining <= 0 or (cfg.dispatch_when_idle and self._idle.is_set()):
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            # Wait for an idle instance; whatever arrives meanwhile joins this batch.
            await self._idle.wait()
            if self._broken is not None:  # no instance left: fail at once, never wait on a hung runtime
                self._forming = []
                self._fail_all(batch, ModelNotReady(f"model {self.name!r} is not ready ({self._broken}); "
                                                    "reload it", retry_after_s=5))
                continue
            while len(batch) < cfg.max_batch_size:
                nxt = self._pop_live()
                if nxt is None:
                    break
                batch.append(nxt)
            index = self._free.popleft()
            if not self._free:
                self._idle.clear()
            self._forming = []
            self._inflight[index] = (time.monotonic(), self.cost.batch(len(batch)))
            task = asyncio.get_running_loop().create_task(self._run(index, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _fail_all(self, batch: list[_Item], err: Exception) -> None:
        """Fail ``batch`` and everything queued behind it with ``err``."""
        while (item := self._pop_live()) is not None:
            batch.append(item)
        _fail(batch, err)

    async def _call(self, index: int, payloads: list[Any]) -> StepResult:
        """Run the step on the instance's thread, under the watchdog when one is set."""
        fut = asyncio.wrap_future(self._executors[index].submit(self._steps[index], payloads))
        if self.watchdog_s <= 0:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.watchdog_s)
        except TimeoutError:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # its late end is nobody's
            raise self._retire(index, len(payloads)) from None

    def _retire(self, index: int, size: int) -> RuntimeHung:
        """Take a hung instance out of the pool for good; the error its batch's requests get."""
        self.retired.add(index)
        left = len(self._steps) - len(self.retired)
        reason = (f"runtime instance {index} hung: a batch of {size} ran longer than the {self.watchdog_s:g} s "
                  f"watchdog (--watchdog-s); retired, {left} of {len(self._steps)} instances left")
        logger.error("model %s: %s", self.name, reason)
        if not left:
            self._broken = reason
            self._idle.set()  # wake the loop: it fails what is queued
            self._wakeup.set()
        if self.on_unhealthy is not None:
            try:
                self.on_unhealthy(reason)
            except Exception:  # noqa: BLE001 - a failing callback must not hang the batch's callers
                logger.exception("model %s: on_unhealthy callback failed", self.name)
        return RuntimeHung(f"model {self.name!r}: {reason}; retry later (the model must be reloaded)")

    async def _run(self, index: int, batch: list[_Item]) -> None:
        try:
            # A caller may have gone away, or a deadline passed, while we waited for an instance.
            batch = [it for it in batch if self._live(it)]
            if not batch:
                return
            started = time.monotonic()
            try:
                # Collating (np.stack, GPU decode) copies every image: on the instance's thread, never the loop.
                res = await self._call(index, [it.payload for it in batch])
                expected = len(batch) - len(res.failed)
                if res.rows.shape[0] != expected:
                    raise RuntimeError(f"runtime returned {res.rows.shape[0]} rows for a batch of {expected}")
            except RuntimeHung as e:
                _fail(batch, e)
                return
            except Exception as e:  # noqa: BLE001 - a failed batch fails its members, never the loop
                logger.exception("batch of %d failed on model %s", len(batch), self.name)
                _fail(batch, InferenceFailed(f"inference failed on model {self.name!r}: {type(e).__name__}: {e}"))
                return
            done = time.monotonic()
            compute = done - started
            # What the batch cost the device, from the moment the instance could have started it: the
            # loop's hand-off (slow on a starved CPU) counts, as it does for the requests waiting.
            self.cost.observe(len(batch), done - max(self._freed_at[index], batch[0].enqueued))
            queue_s = [started - it.enqueued for it in batch]
            row = 0
            for i, it in enumerate(batch):
                failed = res.failed.get(i)
                if failed is None:
                    if not it.future.done():
                        it.future.set_result((res.rows[row], queue_s[i], compute))
                    row += 1
                elif not it.future.done():
                    it.future.set_exception(failed)
            if self._on_batch:
                self._on_batch(BatchStats(len(batch), compute, queue_s))
        finally:
            self._inflight.pop(index, None)
            self._freed_at[index] = time.monotonic()
            if index not in self.retired:
                self._free.append(index)
                self._idle.set()
            self._wakeup.set()


def _fail(batch: list[_Item], err: Exception) -> None:
    for it in batch:
        if not it.future.done():
            it.future.set_exception(err)
