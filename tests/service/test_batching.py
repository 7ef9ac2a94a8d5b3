"""The dynamic batcher with a fake runtime: formation, delay, deadlines, shedding, failure isolation.

No test hopes that something happened by a given time: a test waits for the runtime to be entered (or
held at its gate) before the next step, and a delay that must *not* pass is made far longer than the
test's own deadline, so a busy machine changes how long a test takes, never its outcome.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from service.engine.batching import Batcher, BatcherConfig, BatchStats
from service.engine.steps import StepResult, stacked
from service.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, QueueFull

#: how long a test waits for something that takes milliseconds: a failure, not a hang, if it never happens
DEADLINE_S = 30.0
#: a queue delay no batch may wait in a test that expects the batch to close for another reason
NEVER_S = 3600.0
T = TypeVar("T")


class FakeRuntime:
    """Returns row i = [input value, batch size]; sleeps to mimic compute; can be told to fail, or held
    at a gate (``entered`` counts the batches that reached it)."""

    def __init__(self, compute_s: float = 0.0) -> None:
        self.compute_s = compute_s
        self.batches: list[int] = []
        self.fail_when: float | None = None
        self.gate: threading.Event | None = None
        self.entered = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.entered += 1
        if self.gate is not None:
            assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        self.batches.append(batch.shape[0])
        time.sleep(self.compute_s)
        if self.fail_when is not None and (batch[:, 0] == self.fail_when).any():
            raise RuntimeError("boom")
        return np.stack([batch[:, 0], np.full(batch.shape[0], batch.shape[0], dtype=np.float32)], axis=1)


def tensor(v: float) -> np.ndarray:
    return np.full((1,), v, dtype=np.float32)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (yielding to the loop) until it holds; fail after ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S:g} s: {what}"
        await asyncio.sleep(0.001)


async def entered(rt: FakeRuntime, n: int = 1) -> None:
    await until(lambda: rt.entered >= n, f"{n} batch(es) in the runtime")


async def within(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, DEADLINE_S)


async def run_batcher(rt: FakeRuntime, **cfg: object) -> Batcher:
    stats: list[BatchStats] = []
    b = Batcher("fake", stacked(rt.infer), BatcherConfig(**cfg), stats.append)  # type: ignore[arg-type]
    b.start()
    return b


async def test_concurrent_requests_share_a_batch() -> None:
    rt = FakeRuntime(compute_s=0.01)
    b = await run_batcher(rt, max_batch_size=8, max_queue_delay_s=0.05)
    futs = [f for i in range(8) for f in b.submit([tensor(i)], None)]
    rows = await asyncio.gather(*futs)
    assert rt.batches == [8]
    # each caller gets its own row back, in order
    assert [float(r[0][0]) for r in rows] == list(range(8))
    await b.drain_and_stop()


async def test_batch_closes_after_max_queue_delay() -> None:
    rt = FakeRuntime()
    b = await run_batcher(rt, max_batch_size=32, max_queue_delay_s=0.03)
    t0 = time.monotonic()
    (fut,) = b.submit([tensor(1)], None)
    await within(fut)  # a batch of 1 of 32: only the delay closes it
    waited = time.monotonic() - t0
    assert waited >= 0.025, waited  # not before the delay (how long after is the machine's business)
    assert rt.batches == [1]
    await b.drain_and_stop()


async def test_preferred_size_closes_early() -> None:
    rt = FakeRuntime()
    b = await run_batcher(rt, max_batch_size=32, max_queue_delay_s=NEVER_S, preferred_batch_sizes=[4])
    futs = b.submit([tensor(i) for i in range(4)], None)
    await within(asyncio.gather(*futs))  # only the preferred size can close it before NEVER_S
    assert rt.batches == [4]
    await b.drain_and_stop()


async def test_batch_grows_while_runtime_busy() -> None:
    rt = FakeRuntime()
    rt.gate = threading.Event()
    b = await run_batcher(rt, max_batch_size=16, max_queue_delay_s=0.0)
    first = b.submit([tensor(0)], None)
    await entered(rt)  # the first batch of 1 is running now, held at the gate
    rest = [f for i in range(1, 11) for f in b.submit([tensor(i)], None)]
    rt.gate.set()
    await within(asyncio.gather(*first, *rest))
    assert rt.batches == [1, 10]
    await b.drain_and_stop()


async def test_deadline_expires_in_queue() -> None:
    rt = FakeRuntime()
    rt.gate = threading.Event()  # the runtime is stuck on the first batch
    b = await run_batcher(rt, max_batch_size=1, max_queue_delay_s=0.0)
    blocker = b.submit([tensor(0)], None)
    await entered(rt)
    deadline = time.monotonic() + 0.02
    (late,) = b.submit([tensor(1)], deadline)
    await until(lambda: time.monotonic() > deadline, "the deadline passes")
    rt.gate.set()
    with pytest.raises(DeadlineExceeded):
        await within(late)
    await within(asyncio.gather(*blocker))
    assert rt.batches == [1]  # the expired request never reached the runtime
    await b.drain_and_stop()


async def test_full_queue_sheds_with_retry_after() -> None:
    rt = FakeRuntime()
    rt.gate = threading.Event()
    b = await run_batcher(rt, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=3)
    held = b.submit([tensor(0)], None)
    await entered(rt)  # taken by the runtime: the queue is empty again
    held += b.submit([tensor(i) for i in range(1, 4)], None)
    with pytest.raises(QueueFull) as exc:
        b.submit([tensor(9)], None)
    assert exc.value.status == 503 and int(exc.value.headers["Retry-After"]) >= 1
    rt.gate.set()
    await within(asyncio.gather(*held))
    await b.drain_and_stop()


async def test_failing_batch_fails_only_its_members_and_loop_survives() -> None:
    rt = FakeRuntime(compute_s=0.01)
    rt.fail_when = 666.0
    b = await run_batcher(rt, max_batch_size=4, max_queue_delay_s=0.02)
    bad = b.submit([tensor(666)], None) + b.submit([tensor(1)], None)
    results = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results)
    # the loop keeps running: the next batch succeeds
    (ok,) = b.submit([tensor(2)], None)
    row, _, _ = await ok
    assert float(row[0]) == 2.0
    await b.drain_and_stop()


async def test_wrong_row_count_is_an_error_not_a_misattribution() -> None:
    b = Batcher("fake", stacked(lambda x: x[:1]), BatcherConfig(max_batch_size=4, max_queue_delay_s=0.02))
    b.start()
    futs = b.submit([tensor(1), tensor(2)], None)
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) and "rows" in r.message for r in results)
    await b.drain_and_stop()


async def test_cancelled_callers_are_dropped() -> None:
    rt = FakeRuntime()
    rt.gate = threading.Event()
    b = await run_batcher(rt, max_batch_size=8, max_queue_delay_s=0.0)
    blocker = b.submit([tensor(0)], None)
    await entered(rt)
    gone = b.submit([tensor(i) for i in range(1, 4)], None)
    for f in gone:
        f.cancel()
    (kept,) = b.submit([tensor(7)], None)
    rt.gate.set()
    await within(asyncio.gather(*blocker))
    row, _, _ = await within(kept)
    assert float(row[0]) == 7.0
    assert rt.batches == [1, 1]  # the three cancelled images never ran
    await b.drain_and_stop()


async def test_admission_rejects_requests_that_cannot_meet_their_deadline() -> None:
    rt = FakeRuntime(compute_s=0.02)
    b = await run_batcher(rt, max_batch_size=2, max_queue_delay_s=0.0)
    # learn the cost: ~10 ms per image
    await asyncio.gather(*b.submit([tensor(0), tensor(1)], None))
    rt.gate = threading.Event()
    held = b.submit([tensor(i) for i in range(20)], None)  # ~200 ms of work ahead
    with pytest.raises(QueueFull, match="deadline"):
        b.submit([tensor(99)], time.monotonic() + 0.02)
    # a request with enough time is admitted (however slow the first batch was on this machine)
    ok = b.submit([tensor(98)], time.monotonic() + NEVER_S)
    rt.gate.set()
    await within(asyncio.gather(*held, *ok))
    await b.drain_and_stop()


async def test_drain_finishes_queued_work_then_refuses() -> None:
    rt = FakeRuntime(compute_s=0.01)
    b = await run_batcher(rt, max_batch_size=2, max_queue_delay_s=0.0)
    futs = b.submit([tensor(i) for i in range(6)], None)
    await b.drain_and_stop()
    assert all(f.done() and not f.exception() for f in futs)
    with pytest.raises(ModelNotReady):
        b.submit([tensor(1)], None)


async def test_dispatch_when_idle_skips_the_delay_but_still_batches_under_load() -> None:
    rt = FakeRuntime()
    rt.gate = threading.Event()
    b = await run_batcher(rt, max_batch_size=16, max_queue_delay_s=NEVER_S, dispatch_when_idle=True)
    first = b.submit([tensor(0)], None)
    await entered(rt)  # dispatched at once on the idle runtime: the delay would take NEVER_S
    rest = [f for i in range(1, 6) for f in b.submit([tensor(i)], None)]
    rt.gate.set()
    await within(asyncio.gather(*first, *rest))
    assert rt.batches == [1, 5]  # the five that came while it ran shared one batch
    await b.drain_and_stop()


async def test_admission_reserves_room_before_decoding_and_drain_waits_for_it() -> None:
    rt = FakeRuntime()
    b = await run_batcher(rt, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=3)
    b.admit(2, None)  # two images being decoded
    with pytest.raises(QueueFull):
        b.admit(2, None)  # 2 reserved + 2 > 3
    b.release(1)
    b.admit(2, None)  # 1 + 2 fits
    drained = asyncio.get_running_loop().create_task(b.drain_and_stop())
    await asyncio.sleep(0.02)  # a chance to finish early, were it wrong: it polls every 5 ms
    assert not drained.done()  # admitted images are still coming
    futs = b.submit([tensor(1), tensor(2)], None, admitted=True)
    b.release(1)
    await within(asyncio.gather(*futs))
    await within(drained)


async def test_instances_run_batches_at_the_same_time() -> None:
    """Two instances behind one batcher: while one computes, the next batch starts on the other.

    Each batch waits at a barrier for the other: it passes only if both run at the same time (serial
    instances would break it after DEADLINE_S and fail the batches), whatever the machine's speed."""
    both = threading.Barrier(2, timeout=DEADLINE_S)

    def instance(items: list[np.ndarray]) -> StepResult:
        both.wait()
        return StepResult(np.stack(items))

    b = Batcher("pool", [instance, instance], BatcherConfig(max_batch_size=2, max_queue_delay_s=0.0,
                                                              dispatch_when_idle=True))
    b.start()
    assert b.instance_count == 2
    rows = await within(b.run([tensor(i) for i in range(4)], None))
    assert [float(r[0][0]) for r in rows] == [0, 1, 2, 3]
    await b.drain_and_stop()


async def test_an_item_that_fails_alone_fails_only_its_caller() -> None:
    """A step may fail single items (a JPEG no decoder reads): their callers get that error, the rest rows."""
    from service.errors import BadImage

    def instance(items: list[np.ndarray]) -> StepResult:
        bad = {i: BadImage("corrupt") for i, it in enumerate(items) if float(it[0]) < 0}
        return StepResult(np.stack([it for i, it in enumerate(items) if i not in bad]), bad)

    b = Batcher("one-bad", instance, BatcherConfig(max_batch_size=8, max_queue_delay_s=0.02))
    b.start()
    good, bad, good2 = (b.submit([tensor(v)], None)[0] for v in (1.0, -1.0, 2.0))
    results = await asyncio.gather(good, bad, good2, return_exceptions=True)
    assert float(results[0][0][0]) == 1.0 and float(results[2][0][0]) == 2.0  # type: ignore[index]
    assert isinstance(results[1], BadImage)
    each = await b.run_each([tensor(3.0), tensor(-3.0)], None)
    assert float(each[0][0][0]) == 3.0 and isinstance(each[1], BadImage)  # type: ignore[index]
    with pytest.raises(BadImage):
        await b.run([tensor(4.0), tensor(-4.0)], None)
    await b.drain_and_stop()


async def test_an_inflated_cost_estimate_cannot_lock_a_model_out() -> None:
    """A first batch that took seconds (a decoder's lazy start) must not make admission refuse forever:
    with nothing ahead a request runs anyway, and its fast batch brings the estimate back down."""
    rt = FakeRuntime()
    stats: list[BatchStats] = []
    b = Batcher("fake", stacked(rt.infer), BatcherConfig(max_batch_size=4, max_queue_delay_s=0.0,
                                                         dispatch_when_idle=True), stats.append)
    b.start()
    b.cost.observe(1, 100.0)  # 100 s per image
    # a deadline far under the estimate (100 s): refused on the estimate alone
    rows = await b.run([tensor(1)], time.monotonic() + DEADLINE_S)
    assert float(rows[0][0][0]) == 1.0
    walls = []
    for _ in range(60):  # each fast batch takes about a quarter off the excess
        t0 = time.monotonic()
        await b.run([tensor(2)], time.monotonic() + DEADLINE_S)
        walls.append(time.monotonic() - t0)  # a batch's cost (hand-off included) is within its request's time
    # what a batch measures here is the machine's business; what is left of the excess, 100 s * 0.76**60 < 0.01 ms
    slowest = max(walls)
    assert len(stats) == 61 and b.cost.batch(1) < slowest + 0.002, (b.cost.batch(1), slowest)
    settled = b.cost.batch(1)
    b.cost.observe(1, 100.0)  # one more outlier moves it at most 4x
    assert b.cost.batch(1) <= 4 * settled
    await b.drain_and_stop()


async def test_the_backlog_counts_what_stands_between_admission_and_the_device() -> None:
    """Ahead of a request admitted now: images still being decoded, the queue, the batch formed and
    waiting for an instance (taken off the queue, it was missed), and what is left of the batch in flight."""
    rt = FakeRuntime()
    rt.gate = threading.Event()
    b = await run_batcher(rt, max_batch_size=2, max_queue_delay_s=0.0)
    held = b.submit([tensor(0)], None)
    await entered(rt)  # in flight
    held += b.submit([tensor(i) for i in range(1, 4)], None)
    await until(lambda: b.queue_depth == 1, "a batch of two formed, waiting for the instance")
    ticket = b.admit(2, None)  # two images being decoded
    backlog = b.backlog()
    assert (backlog.decoding, backlog.queued, len(backlog.inflight_left), backlog.instances) == (2, 3, 1, 1)
    assert ticket.decoding_ahead == 0 and ticket.decodes and not backlog.idle
    rt.gate.set()
    futs = b.submit([tensor(8), tensor(9)], None, admitted=ticket)  # its trip through the pre stage is learnt
    await within(asyncio.gather(*held, *futs))
    assert b.cost.pre_samples == 1 and b.cost.outcomes == 0  # run_each learns outcomes; bare futures do not
    assert b.backlog().idle
    await within(b.run([tensor(1)], None))
    assert b.cost.outcomes == 1
    await b.drain_and_stop()


async def test_admission_counts_the_images_still_being_decoded() -> None:
    """A slow decode stage misses deadlines however fast the device is: the images admitted ahead and
    still in the pre stage cost its rate (they were counted at the device's before)."""
    b = await run_batcher(FakeRuntime(), max_batch_size=8, max_queue_delay_s=0.0)
    b.cost.observe(8, 0.008)  # a fast device: 1 ms an image
    b.cost.observe_pre(1, 10.0)  # a slow pre stage: 10 s an image
    b.admit(3, None)  # three images being decoded
    with pytest.raises(QueueFull, match="deadline"):
        b.admit(1, time.monotonic() + DEADLINE_S)  # 40 s of decoding before its result
    b.admit(1, time.monotonic() + NEVER_S)
    b.admit(1, time.monotonic() + DEADLINE_S, decodes=False)  # model inputs reach the queue before those images
    b.release(5)
    await b.drain_and_stop()
