"""``cpucap.settle``: the quota is rescaled until the capped server runs at the rate asked for (no cgroup
needed: a fake group records the quotas set, a fake server's rate follows them, not proportionally)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtest import cpucap


class FakeGroup(cpucap.CpuCgroup):
    def __init__(self, per_core: float) -> None:
        super().__init__(Path("/nonexistent"), True)
        object.__setattr__(self, "quotas", [per_core])

    def set_quota(self, cores: float, period_us: int) -> None:
        assert period_us >= 10_000, "the period is never under 10 ms"
        self.quotas.append(cores / (os.cpu_count() or 1))  # type: ignore[attr-defined]


def served(group: FakeGroup, full_rps: float = 150.0) -> float:
    """A server whose rate falls faster than its quota (throttling in bursts wastes some of each slice)."""
    return full_rps * group.quotas[-1] ** 1.4  # type: ignore[attr-defined]


def test_settle_reaches_the_target_rate_from_a_guess_that_lands_at_half_of_it() -> None:
    group = FakeGroup(0.034)
    assert served(group) < 0.5 * 8.0  # per_core_for's guess: far too slow
    per_core, rps = cpucap.settle(group, 0.034, lambda: served(group), 8.0)
    assert abs(rps / 8.0 - 1) <= 0.2
    assert per_core == group.quotas[-1] and per_core > 0.034  # type: ignore[attr-defined]


def test_settle_leaves_a_quota_on_target_alone_and_stops_after_its_tries() -> None:
    on_target = FakeGroup(0.13)
    assert cpucap.settle(on_target, 0.13, lambda: 8.5, 8.0) == (0.13, 8.5)
    assert on_target.quotas == [0.13]  # type: ignore[attr-defined]
    stuck = FakeGroup(0.1)  # a machine whose rate does not follow its quota: bounded, not a loop
    per_core, rps = cpucap.settle(stuck, 0.1, lambda: 1.0, 8.0, tries=3)
    assert rps == 1.0 and len(stuck.quotas) == 4 and per_core == pytest.approx(1.0)  # type: ignore[attr-defined]
