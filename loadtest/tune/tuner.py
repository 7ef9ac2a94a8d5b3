"""The search over configurations, within a time budget, proven by a confirmation run.

Stages, each keeping the best so far (a coordinate search; the engine's batch costs chose the starts):
1. the default configuration (the model as exported, no flags): the baseline of the same run;
2. runtime and precision: every (variant, runtime) pair the costs did not prune, at the largest batch
   that fits the target;
3. parallelism: two instances of one thread each, or two OpenVINO streams;
4. batching: the neighbouring ``max_batch_size`` values, and a short queue delay with a preferred size;
5. ``--processes 2``: front ends decoding in parallel beside one engine process.
Every search starts at the best capacity so far, so a stage costs a few runs. The budget is checked
before each run; what is left when it runs out is listed as not tried. Then the best configuration
runs again, on a fresh server, at ``CONFIRM_SHARES[0]`` (90 %) of its capacity for ``confirm_s``; each
run that misses the target is followed by one at the next, lower share, and the figure reported is the
first that passed (none when every share missed: the search's figure is then not a capacity).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from loadtest.tune.search import Probe, Search, bracket
from loadtest.tune.space import Candidate, Start, batch_options, parallel_options

#: the confirmation's rates, as shares of the searched capacity, tried in turn until one meets the target
CONFIRM_SHARES = (0.9, 0.75, 0.6)
SWITCH_GAIN = 1.03  # a stage's winner must beat the current best by this much (a run's noise is not a gain)
STARTUP_S = 30.0  # what a server start and its warm-up are budgeted at

Serve = Callable[[Candidate], AbstractContextManager[Callable[[float, float], Probe]]]


@dataclass
class Tried:
    candidate: Candidate
    stage: str
    search: Search | None = None
    seconds: float = 0.0
    note: str = ""  # why it has no capacity (did not start, out of budget)

    @property
    def capacity(self) -> float:
        return self.search.capacity if self.search else 0.0

    def to_json(self) -> dict[str, Any]:
        at = self.search.at_capacity() if self.search else None
        return {"candidate": self.candidate.to_json(), "stage": self.stage, "capacity_rps": self.capacity,
                "p99_at_capacity_ms": at.p99_ms if at else None, "seconds": self.seconds, "note": self.note,
                "probes": [p.to_json() for p in self.search.probes] if self.search else []}


@dataclass
class Outcome:
    target_ms: float
    tried: list[Tried] = field(default_factory=list)
    confirmations: list[Probe] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def default(self) -> Tried:
        return next(t for t in self.tried if t.candidate.default)

    @property
    def best(self) -> Tried:
        return max(self.tried, key=lambda t: t.capacity)

    @property
    def confirmed_rps(self) -> float:
        """The rate the confirmation carried within the target (0.0: none did)."""
        return max((p.rate for p in self.confirmations if p.passes(self.target_ms)), default=0.0)


@dataclass
class Tuner:
    target_ms: float
    serve: Serve
    budget_s: float = 900.0
    confirm_s: float = 60.0
    cores: int = 2
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    min_requests: int = 400  # a run lasts long enough for this many arrivals (a p99 of a few hundred) ...
    probe_s: tuple[float, float] = (6.0, 15.0)  # ... within these bounds
    max_probes: int = 6
    precision: float = 0.1
    max_candidates: int = 0  # configurations to try, the default included (0: as the budget allows)

    def __post_init__(self) -> None:
        self._t0 = self.clock()
        self._count = 0

    def seconds_for(self, rate: float) -> float:
        lo, hi = self.probe_s
        return min(hi, max(lo, self.min_requests / rate))

    def _left(self) -> float:
        reserve = self.confirm_s + STARTUP_S  # the confirmation run is never squeezed out
        return self.budget_s - (self.clock() - self._t0) - reserve

    def _run(self, run: Callable[[float, float], Probe], rate: float, label: str) -> Probe:
        probe = run(rate, self.seconds_for(rate))
        why = probe.why_not(self.target_ms)
        p99 = f"{probe.p99_ms:.0f}" if probe.p99_ms is not None else "-"
        self.say(f"  {label}: {rate:.1f} req/s -> p99 {p99} ms, {probe.errors} errors of {probe.sent}: "
                 f"{why or 'meets the target'}  [{self.clock() - self._t0:.0f} s]")
        return probe

    def measure(self, cand: Candidate, stage: str, start: float) -> Tried:
        tried = Tried(cand, stage)
        self._count += 1
        if self.max_candidates and self._count > self.max_candidates:
            tried.note = "not tried: --max-candidates"
        elif self._left() < STARTUP_S + 2 * self.probe_s[1]:
            tried.note = "not tried: time budget spent"
        if tried.note:
            self.say(f"[{stage}] {cand.label()}: {tried.note}")
            return tried
        self.say(f"[{stage}] {cand.label()}: searching from {start:.1f} req/s")
        t0 = self.clock()
        try:
            with self.serve(cand) as run:
                tried.search = bracket(lambda r: self._run(run, r, cand.label()), self.target_ms, start,
                                       precision=self.precision, max_probes=self.max_probes,
                                       keep_going=lambda: self._left() > self.probe_s[1])
        except (RuntimeError, TimeoutError, OSError) as e:  # did not start (e.g. refused its gate here)
            tried.note = f"did not serve: {str(e).splitlines()[0][:200]}"
        tried.seconds = self.clock() - t0
        self.say(f"[{stage}] {cand.label()}: "
                 + (tried.note or f"capacity {tried.capacity:.1f} req/s at p99 <= {self.target_ms:g} ms"))
        return tried

    def _stage(self, out: Outcome, stage: str, cands: list[Candidate], best: Tried) -> Tried:
        for cand in cands:
            tried = self.measure(cand, stage, max(best.capacity, 1.0))
            out.tried.append(tried)
            if tried.capacity > best.capacity * SWITCH_GAIN:
                best = tried
        return best

    def tune(self, model: str, default_start: float, starts: list[Start], max_batch: dict[str, int]) -> Outcome:
        """``model``: the one the default serves (also when the costs pruned every pair); ``default_start``:
        where its search starts; ``starts``: the runtime-and-precision stage's candidates
        (``space.first_candidates``); ``max_batch``: each variant's exported batch limit."""
        out = Outcome(self.target_ms)
        default = self.measure(Candidate(model, default=True), "default", default_start)
        out.tried.append(default)
        lead: Tried | None = None
        for s in starts:
            tried = self.measure(s.candidate, "runtime+precision",
                                 max(default.capacity, s.predicted_rps / 2, 1.0))
            out.tried.append(tried)
            if lead is None or tried.capacity > lead.capacity:
                lead = tried
        if lead is not None and lead.capacity > 0:
            lead = self._stage(out, "parallelism", parallel_options(lead.candidate, self.cores), lead)
            lead = self._stage(out, "batching", batch_options(lead.candidate, max_batch[lead.candidate.model]), lead)
            self._stage(out, "processes", [replace(lead.candidate, processes=2)], lead)
        self.confirm(out)
        out.wall_s = self.clock() - self._t0
        return out

    def confirm(self, out: Outcome) -> None:
        best = out.best
        if best.capacity <= 0:
            return
        for share in CONFIRM_SHARES:
            rate = best.capacity * share
            self.say(f"[confirm] {best.candidate.label()}: {rate:.1f} req/s ({share:.0%} of {best.capacity:.1f}) "
                     f"for {self.confirm_s:g} s on a fresh server")
            try:
                with self.serve(best.candidate) as run:
                    probe = run(rate, self.confirm_s)
            except (RuntimeError, TimeoutError, OSError) as e:
                self.say(f"[confirm] did not serve: {e}")
                return
            out.confirmations.append(probe)
            why = probe.why_not(self.target_ms)
            self.say(f"[confirm] p99 {probe.p99_ms or 0:.0f} ms, {probe.errors} errors of {probe.sent}: "
                     f"{'confirmed' if not why else 'missed: ' + why}")
            if not why:
                return
