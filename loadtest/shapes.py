"""Open-loop load shapes: a ramp (warm-up, steady, spike, recovery) and stepped rates with a capacity answer.

Both set the number of ``OpenLoopUser``s (each at ``--user-rate`` req/s) so that users x rate is the
arrival rate of the stage. ``StepShape`` also measures each step (its last 75 %, after the queue
has settled) and answers the operator's question: the highest arrival rate at which p99 stays under
``--capacity-p99-ms`` with no failures, under 1 % shed and the offered rate achieved.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from locust import LoadTestShape
from locust.stats import RequestStats

from loadtest.slo import Snapshot, capacity, parse_stages, step_result

log = logging.getLogger(__name__)
SETTLE = 0.25  # share of each step left out of its measurement


def snapshot(stats: RequestStats, t: float) -> Snapshot:
    shed = sum(e.num_requests for (_, method), e in stats.entries.items() if method == "SHED")
    total = stats.total
    return Snapshot(total.num_requests, total.num_failures, shed, dict(total.response_times), t)


class _OpenLoopShape(LoadTestShape):
    abstract = True

    def parsed_options(self) -> Any:
        return self.runner.environment.parsed_options if self.runner is not None else None

    def stages(self) -> list[tuple[float, float]]:
        raise NotImplementedError

    def users_for(self, rate: float) -> tuple[int, float]:
        opts = self.parsed_options()
        per_user = opts.user_rate if opts is not None else 1.0
        users = math.ceil(rate / per_user - 1e-9)
        return users, float(max(users, 1))  # reach each stage within about a second

    def stage_at(self, t: float) -> tuple[int, float] | None:
        """(index, rate) of the stage running at ``t`` s, or None when the shape is over."""
        end = 0.0
        for i, (seconds, rate) in enumerate(self.stages()):
            end += seconds
            if t < end:
                return i, rate
        return None

    def tick(self) -> tuple[int, float] | None:
        now = self.stage_at(self.get_run_time())
        return None if now is None else self.users_for(now[1])


class RampShape(_OpenLoopShape):
    """``--ramp`` stages, by default 10 s warm-up at 5 req/s, 30 s steady at 10, a 10 s spike at 30, 20 s
    recovery at 10: the latency-over-time plot of its history CSV shows the spike and the recovery."""

    abstract = True  # collected where loadtest/ramp.py imports it

    def stages(self) -> list[tuple[float, float]]:
        opts = self.parsed_options()
        return parse_stages(opts.ramp if opts is not None else "10:5,30:10,10:30,20:10")


class StepShape(_OpenLoopShape):
    """``--steps`` arrival rates, ``--step-seconds`` each; the capacity answer is logged, kept on
    ``environment.capacity`` and put in the summary line (``loadtest.gate``)."""

    abstract = True  # collected where loadtest/steps.py imports it

    def __init__(self) -> None:
        super().__init__()
        self._step = -1
        self._start: Snapshot | None = None
        self.results: list[dict[str, Any]] = []

    def options(self) -> tuple[list[float], float, float]:
        opts = self.parsed_options()
        if opts is None:
            return [5.0, 10.0], 10.0, 250.0
        return [float(r) for r in opts.steps.split(",")], opts.step_seconds, opts.capacity_p99_ms

    def stages(self) -> list[tuple[float, float]]:
        rates, seconds, _ = self.options()
        return [(seconds, r) for r in rates]

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        rates, seconds, slo = self.options()
        step = int(t // seconds)
        assert self.runner is not None
        stats = self.runner.environment.stats
        if self._start is not None and (step != self._step or step >= len(rates)):
            self._finish(rates[self._step], snapshot(stats, t), slo)
        if step >= len(rates):
            return None
        if step != self._step:
            self._step = step
        if self._start is None and t - step * seconds >= SETTLE * seconds:
            self._start = snapshot(stats, t)
        return self.users_for(rates[step])

    def _finish(self, rate: float, end: Snapshot, slo: float) -> None:
        assert self._start is not None
        result = step_result(rate, self._start, end, slo)
        self._start = None
        self.results.append(result)
        log.info("step %.0f req/s: achieved %.1f, p50 %s ms, p99 %s ms, failures %d, shed %d: %s", rate,
                 result["achieved_rps"], result["p50_ms"], result["p99_ms"], result["failures"], result["shed"],
                 "within the SLO" if result["pass"] else "over")
        answer = capacity(self.results, slo)
        if self.runner is not None:
            setattr(self.runner.environment, "capacity", answer)  # noqa: B010 (read by loadtest.gate)
        if answer["capacity_rps"] is not None:
            log.info("capacity so far: %.0f req/s at p99 <= %.0f ms", answer["capacity_rps"], slo)
