"""How far admission's completion estimate was off, from the service's own histogram.

``inference_admission_estimate_error_seconds`` (service.metrics) observes, for every admitted request,
its completion minus the completion that admission predicted (positive: later than promised). Two
scrapes of ``/metrics`` around a phase give that phase's counts per bucket; ``quantile`` reads them as
Prometheus' ``histogram_quantile`` does (linear within a bucket), so the figures are as fine as the
buckets (10-25 ms around zero, coarser further out).
"""

from __future__ import annotations

import math
import re
import urllib.request

METRIC = "inference_admission_estimate_error_seconds"
_BUCKET = re.compile(rf'^{METRIC}_bucket\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$', re.M)


def buckets(metrics_text: str, model: str) -> dict[float, float]:
    """Cumulative ``{upper bound: count}`` of ``model``'s series in a /metrics body ({} when absent)."""
    out: dict[float, float] = {}
    for m in _BUCKET.finditer(metrics_text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("model") == model:
            out[float(labels["le"])] = out.get(float(labels["le"]), 0.0) + float(m["value"])
    return out


def scrape(url: str, model: str) -> dict[float, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 - loopback only
        return buckets(resp.read().decode(), model)


def delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def quantile(cumulative: dict[float, float], q: float) -> float:
    """The ``q`` quantile (0..1) of a cumulative histogram; NaN when it is empty. Below the lowest bound
    it is that bound; in the +Inf bucket, the highest finite bound (as Prometheus answers)."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if not total:
        return float("nan")
    rank = q * total
    prev_le, prev_n = -math.inf, 0.0
    for le in bounds:
        n = cumulative[le]
        if n >= rank:
            if math.isinf(le):
                return prev_le
            if math.isinf(prev_le) or n == prev_n:
                return le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return bounds[-1]


def summary(cumulative: dict[float, float]) -> dict[str, float]:
    """Count, p50 and p99 in ms, and how many finished later than predicted."""
    late = cumulative.get(math.inf, 0.0) - cumulative.get(0.0, 0.0)
    return {"n": cumulative.get(math.inf, 0.0), "p50_ms": 1000 * quantile(cumulative, 0.5),
            "p99_ms": 1000 * quantile(cumulative, 0.99), "late": late}
