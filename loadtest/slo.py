"""The numbers behind the SLO gate and the capacity answer: pure functions, no locust (tests import them).

Latencies are locust's ``{rounded ms: count}`` histograms; a step's distribution is the difference
of two snapshots of the cumulative one, so the answer needs no per-request log and works on the
master of a distributed run (whose statistics are the workers' merged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_SHED = 0.01  # share of a step's arrivals that may be shed
MIN_ACHIEVED = 0.9  # share of the offered rate that must arrive (users falling behind show here)


def percentile(times: dict[int, int], q: float) -> int | None:
    """The ``q`` latency percentile of a ``{ms: count}`` histogram, by the rule of locust's own reports
    (``locust.stats.calculate_response_time_percentile``), so the capacity answer matches its tables."""
    total = sum(times.values())
    if not total:
        return None
    keep = int(total * q)
    seen = 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if total - seen <= keep:
            return ms
    return 0


def parse_stages(text: str) -> list[tuple[float, float]]:
    """``"10:5,30:10"`` -> ``[(10.0, 5.0), (30.0, 10.0)]`` (seconds, req/s)."""
    stages = []
    for part in text.split(","):
        seconds, _, rate = part.partition(":")
        stages.append((float(seconds), float(rate)))
    if not stages or any(s <= 0 or r < 0 for s, r in stages):
        raise ValueError(f"stages must be seconds:rate pairs with seconds > 0, got {text!r}")
    return stages


def evaluate(result: dict[str, Any], opts: Any) -> dict[str, dict[str, Any]]:
    """``{check: {value, limit, pass}}`` for each threshold given on the command line."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, value: float | None, limit: float | None, higher_is_better: bool = False) -> None:
        if limit is None:
            return
        ok = value is not None and (value >= limit if higher_is_better else value <= limit)
        checks[name] = {"value": value, "limit": limit, "pass": ok}

    check("fail_ratio", result["fail_ratio"], opts.slo_fail_ratio)
    check("p95_ms", result["p95_ms"], opts.slo_p95_ms)
    check("p99_ms", result["p99_ms"], opts.slo_p99_ms)
    check("rps", result["rps"], opts.slo_min_rps, higher_is_better=True)
    if checks and not result["requests"]:
        checks["requests"] = {"value": 0, "limit": 1, "pass": False}  # no traffic passes no SLO
    return checks


@dataclass
class Snapshot:
    num_requests: int
    num_failures: int
    shed: int
    response_times: dict[int, int]
    t: float



def step_result(rate: float, a: Snapshot, b: Snapshot, slo_ms: float) -> dict[str, Any]:
    """One step's numbers between two snapshots, and whether it meets the SLO."""
    seconds = max(b.t - a.t, 1e-9)
    n, failures, shed = b.num_requests - a.num_requests, b.num_failures - a.num_failures, b.shed - a.shed
    times = {ms: n - a.response_times.get(ms, 0) for ms, n in b.response_times.items()}
    p50, p99 = (percentile(times, 0.5), percentile(times, 0.99)) if n else (None, None)
    achieved = (n + shed) / seconds
    ok = (p99 is not None and p99 <= slo_ms and failures == 0 and shed <= MAX_SHED * (n + shed)
          and achieved >= MIN_ACHIEVED * rate)
    return {"rate": rate, "seconds": round(seconds, 1), "requests": n, "failures": failures, "shed": shed,
            "achieved_rps": round(achieved, 2), "served_rps": round(n / seconds, 2), "p50_ms": p50, "p99_ms": p99,
            "pass": ok}


def capacity(steps: list[dict[str, Any]], slo_ms: float) -> dict[str, Any]:
    """The highest step rate that passes, with every lower step passing too."""
    best = None
    for s in sorted(steps, key=lambda s: s["rate"]):
        if not s["pass"]:
            break
        best = s
    return {"slo_p99_ms": slo_ms, "capacity_rps": best["rate"] if best else None,
            "at": best, "steps": steps}
