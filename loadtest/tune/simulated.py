"""A deterministic queueing model of the service, for testing the search and the tuner without a server.

Requests arrive by a seeded Poisson process, are decoded by ``workers`` parallel threads (``pre_ms``
each), wait in one queue, and run in batches on ``instances`` runtime instances: an idle instance takes
every decoded request waiting, up to ``max_batch`` (the CPU default, dispatch when idle), and a batch of
``b`` costs ``cost_ms(b)``. The same seed gives the same gaps at every rate (scaled by it), so a
configuration's p99 grows with the rate as it does on a quiet machine, and a test can sweep for the
true capacity to hold the search's answer against.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loadtest.rawclient import poisson_offsets
from loadtest.tune.search import Probe

DEADLINE_MS = 30_000.0  # a request not answered within this failed (the service's default deadline)
GRACE_S = 1.0  # answers this long after the last arrival still count as keeping up


@dataclass(frozen=True)
class SimulatedServer:
    cost_ms: Callable[[int], float]
    max_batch: int = 1
    instances: int = 1
    workers: int = 2
    pre_ms: float = 0.0
    seed: int = 0

    def arrivals(self, rate: float, seconds: float) -> np.ndarray:
        """The load generator's own Poisson arrival times (s): one seed's gaps, scaled by the rate."""
        return np.array(poisson_offsets(rate, seconds, self.seed))

    def _decoded(self, arrivals: np.ndarray) -> list[float]:
        free = [0.0] * self.workers
        ready = []
        for t in arrivals:
            start = max(float(t), heapq.heappop(free))
            heapq.heappush(free, start + self.pre_ms / 1000)
            ready.append(start + self.pre_ms / 1000)
        return ready

    def finish_times(self, arrivals: np.ndarray) -> np.ndarray:
        ready = sorted(zip(self._decoded(arrivals), range(len(arrivals)), strict=True))
        done = np.zeros(len(arrivals))
        free = [0.0] * self.instances
        i = 0
        while i < len(ready):
            start = max(heapq.heappop(free), ready[i][0])
            j = i
            while j < len(ready) and j - i < self.max_batch and ready[j][0] <= start:
                j += 1
            end = start + self.cost_ms(j - i) / 1000
            for _, k in ready[i:j]:
                done[k] = end
            heapq.heappush(free, end)
            i = j
        return done

    def probe(self, rate: float, seconds: float = 30.0) -> Probe:
        arrivals = self.arrivals(rate, seconds)
        latency_ms = (self.finish_times(arrivals) - arrivals) * 1000
        ok = latency_ms[latency_ms <= DEADLINE_MS]
        in_time = int(np.sum(arrivals + latency_ms / 1000 <= seconds + GRACE_S))
        return Probe(rate=rate, seconds=seconds, sent=len(arrivals), ok=len(ok),
                     p99_ms=float(np.percentile(ok, 99)) if len(ok) else None,
                     p50_ms=float(np.percentile(ok, 50)) if len(ok) else None,
                     mean_ms=float(ok.mean()) if len(ok) else None, answered_in_time=min(in_time, len(ok)))
