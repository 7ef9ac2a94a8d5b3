"""One configuration's capacity: the highest arrival rate whose p99 meets the target (a bracketing search).

MLPerf's server scenario asks the same question of a system (Poisson arrivals; the highest rate whose
p99 meets the bound) and LoadGen finds it by bracketing, not by a fixed sweep: grow the rate until a
run fails, then halve the interval between the highest pass and the lowest fail until it is narrow.
A run passes when its p99 is within the target, under ``MAX_ERRORS`` of its requests failed (503s
included) and the answers kept up with the arrivals (an open loop that falls behind has not carried
the rate, whatever its p99 says).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_ERRORS = 0.01  # share of a run's requests that may fail (errors, 503s, no answer)
MIN_KEPT_UP = 0.9  # share of a run's requests that must be answered by its end (plus a short grace)


@dataclass(frozen=True)
class Probe:
    """One open-loop run at ``rate`` req/s."""

    rate: float
    seconds: float
    sent: int
    ok: int
    p99_ms: float | None  # of the answered requests (None: none answered)
    p50_ms: float | None = None
    mean_ms: float | None = None
    #: answered within the run's window (an overloaded server answers the rest late)
    answered_in_time: int | None = None

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def error_ratio(self) -> float:
        return self.errors / self.sent if self.sent else 1.0

    @property
    def achieved(self) -> float:
        """Answers per second over the run (what the server carried)."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def kept_up(self) -> float:
        """Share of the requests answered by the run's end: an open loop that falls behind shows here."""
        done = self.ok if self.answered_in_time is None else self.answered_in_time
        return done / self.sent if self.sent else 0.0

    def why_not(self, target_ms: float) -> str:
        """"" when the run meets the target, else what missed it."""
        if self.sent == 0:
            return "no requests sent"
        if self.error_ratio >= MAX_ERRORS:
            return f"{100 * self.error_ratio:.1f}% errors"
        if self.p99_ms is None or self.p99_ms > target_ms:
            return f"p99 {self.p99_ms:.0f} ms" if self.p99_ms is not None else "no answers"
        if self.kept_up < MIN_KEPT_UP:
            return f"fell behind: {100 * self.kept_up:.0f}% answered by the run's end"
        return ""

    def passes(self, target_ms: float) -> bool:
        return not self.why_not(target_ms)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"error_ratio": self.error_ratio, "achieved": self.achieved,
                                 "kept_up": self.kept_up}


@dataclass
class Search:
    """A finished search: the capacity (0.0 when even the lowest rate tried missed) and every run."""

    target_ms: float
    probes: list[Probe] = field(default_factory=list)

    @property
    def lowest_fail(self) -> float | None:
        fails = [p.rate for p in self.probes if not p.passes(self.target_ms)]
        return min(fails) if fails else None

    @property
    def capacity(self) -> float:
        """The highest passing rate below the lowest failing one (a pass above a fail is noise, not capacity)."""
        hi = self.lowest_fail
        passes = [p.rate for p in self.probes if p.passes(self.target_ms) and (hi is None or p.rate < hi)]
        return max(passes, default=0.0)

    def at_capacity(self) -> Probe | None:
        return next((p for p in self.probes if p.rate == self.capacity and p.passes(self.target_ms)), None)

    def narrow(self, precision: float) -> bool:
        hi, lo = self.lowest_fail, self.capacity
        return hi is not None and lo > 0 and hi / lo - 1 <= precision


def next_rate(search: Search, start: float, grow: float) -> float:
    """Where to run next: up by ``grow`` until a fail, down by it until a pass, then the geometric middle."""
    if not search.probes:
        return start
    hi, lo = search.lowest_fail, search.capacity
    if hi is None:
        return max(p.rate for p in search.probes) * grow
    if lo == 0.0:
        return hi / grow
    return math.sqrt(lo * hi)


def bracket(run: Callable[[float], Probe], target_ms: float, start: float, *, grow: float = 1.6,
            precision: float = 0.1, max_probes: int = 8, min_rate: float = 0.25,
            keep_going: Callable[[], bool] = lambda: True) -> Search:
    """Search one configuration's capacity from ``start`` req/s; stops when the bracket is within
    ``precision`` (relative), after ``max_probes`` runs, below ``min_rate``, or when ``keep_going`` says so
    (the tuner's time budget)."""
    if start <= 0 or grow <= 1:
        raise ValueError(f"start must be > 0 and grow > 1 (got {start}, {grow})")
    search = Search(target_ms)
    while len(search.probes) < max_probes and not search.narrow(precision) and keep_going():
        rate = next_rate(search, start, grow)
        if rate < min_rate:
            break
        search.probes.append(run(rate))
    return search
