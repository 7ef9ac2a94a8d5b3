"""The admission estimate (service.engine.cost_model) on made-up costs: no runtime, no clock.

What stands between a request admitted now and its result: the images still being decoded ahead of it,
the queue (with the batch waiting for an instance), what is left of the batches in flight, the cost of
a batch at its size, the instances; then the estimate's learnt bias and the margin a promise keeps.
"""

from __future__ import annotations

import math
import random

import pytest

from service.engine.cost_model import MARGIN, Backlog, CostModel


def _model() -> CostModel:
    cost = CostModel()
    cost.observe(8, 0.4)  # a full batch: 50 ms an image
    cost.observe(1, 0.1)  # a batch of one costs a quarter of a batch of eight, not an eighth
    return cost


def test_nothing_is_promised_before_a_batch_was_measured() -> None:
    assert CostModel().estimate(Backlog(queued=100, max_batch=8), 1) == 0.0


def test_cost_is_learnt_per_batch_size_and_scaled_from_the_nearest_size_measured() -> None:
    cost = _model()
    assert cost.batch(8) == 0.4 and cost.batch(1) == 0.1
    assert cost.batch(7) == pytest.approx(0.4 * 7 / 8)  # nearest measured: 8
    assert cost.batch(2) == pytest.approx(0.1 * 2)  # nearest measured: 1


def test_a_slowdown_seen_at_one_size_shows_at_every_size() -> None:
    """Batches of one run on a machine that became 4x slower (a CPU quota, a noisy neighbour): a batch
    of eight, not run since, is priced at the new speed too, not at what it cost an hour ago."""
    cost = _model()
    for _ in range(20):
        cost.observe(1, 0.4)
    assert cost.batch(1) == pytest.approx(0.4, rel=0.01)
    assert cost.batch(8) > 3 * 0.4  # most of the slowdown is the machine's: every size pays it
    one = _model()
    one.observe(8, 100.0)  # one outlier moves a price at most 4x
    assert one.batch(8) <= 4 * 0.4 and one.batch(1) <= 4 * 0.1


def test_noise_does_not_drift_the_price_of_a_size_not_run_for_a_while() -> None:
    """Thousands of noisy batches of one and two (light load: a real CPU's times vary by 2x, and now and
    then a batch is 50x off), then a burst needs a batch of eight: priced within 3x of what it costs,
    whatever the noise drew (a one-sided cap on a linear update priced it 40-60x over, refusing requests
    it could have served). Seeded: the same draws every run."""

    def cost(size: int) -> float:
        return 0.01 * size**0.7

    for seed in range(10):
        rng, model = random.Random(seed), CostModel()
        for step in range(6000):
            size = rng.choice([1, 2, 3, 4, 8]) if step < 2000 else rng.choice([1, 2])
            noise = math.exp(rng.gauss(0, 0.6)) * (rng.choice([0.01, 50]) if rng.random() < 0.02 else 1)
            model.observe(size, cost(size) * noise)
        assert 1 / 3 < model.batch(8) / cost(8) < 3, seed


def test_a_lone_request_costs_its_own_batch() -> None:
    assert _model().estimate(Backlog(max_batch=8), 1) == 0.1


def test_batches_ahead_run_after_the_batch_in_flight_and_its_own_fills_up_under_load() -> None:
    cost = _model()
    # 14 queued (a batch formed and waiting for the instance among them), 2 decoding, 1 more: 17 images
    # = two full batches ahead of the one it runs in, which fills up as recent ones did (~7 images)
    backlog = Backlog(decoding=2, queued=14, inflight_left=[0.25], instances=1, max_batch=8)
    assert round(cost.typical_batch) == 7
    assert cost.estimate(backlog, 1) == pytest.approx(0.25 + 2 * 0.4 + cost.batch(7))
    # two instances share the work ahead
    two = Backlog(decoding=2, queued=14, inflight_left=[0.25, 0.1], instances=2, max_batch=8)
    assert cost.estimate(two, 1) == pytest.approx((0.25 + 0.1 + 2 * 0.4) / 2 + cost.batch(7))


def test_a_batch_in_flight_past_its_estimate_slows_every_batch_behind_it() -> None:
    cost = _model()
    steady = Backlog(queued=15, inflight_left=[0.0], max_batch=8)
    overrun = Backlog(queued=15, inflight_left=[0.0], max_batch=8, slowdown=2.0)  # ran twice its estimate
    assert cost.estimate(overrun, 1) == pytest.approx(2 * cost.estimate(steady, 1))


def test_a_slow_decode_stage_is_the_bottleneck_when_it_is_slower_than_the_device() -> None:
    cost = _model()
    cost.observe_pre(3, 0.3)  # 100 ms an image from admission to the queue, pool wait included
    backlog = Backlog(decoding=30, max_batch=8)
    # 31 images to decode (3.1 s) while the device needs 3 batches (1.2 s) for those ahead of it
    assert cost.estimate(backlog, 1) == pytest.approx(3.1 + cost.batch(7))
    # model inputs (v2 tensors) skip the pre stage
    assert cost.estimate(backlog, 1, decodes=False) == pytest.approx(3 * 0.4 + cost.batch(7))


def test_the_promise_corrects_the_estimates_bias_and_keeps_a_margin_for_its_spread() -> None:
    cost = CostModel()
    assert cost.expected(2.0) == cost.promise(2.0) == 2.0  # nothing learnt: the estimate as it is
    cost.observe_outcome(1.0, 1.5)  # 50 % late
    assert (cost.bias, cost.spread) == (0.5, 0.25)
    assert cost.expected(2.0) == 3.0
    assert cost.promise(2.0) == pytest.approx(2.0 * (1 + 0.5 + MARGIN * 0.25))
    cost.observe_outcome(1.0, 1.0)  # on time: the bias shrinks, the spread grows
    assert cost.bias == pytest.approx(0.4) and cost.spread == pytest.approx(0.3125)
    cost.observe_outcome(1.0, 1000.0)  # a stall is capped like an outlier batch
    assert cost.bias <= 0.4 + 0.2 * (3.0 - 0.4) + 1e-9
