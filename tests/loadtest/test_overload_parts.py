"""The overload benchmark's pure parts (loadtest/overload.py): ratio checks and the table, on made-up runs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from loadtest.estimate_error import buckets, delta, quantile, summary
from loadtest.overload import checks, format_result, pct


def _phase(status: int, p50: float, p99: float, other: float = 0.0) -> dict[str, Any]:
    return {"ok": {"status": status, "n": 100, "p50_ms": p50, "p99_ms": p99},
            "cpu": {"server_cores": 1.0, "client_cores": 0.3, "other_cores": other}, "codes": {"200": 100}}


def _run(shed_p99: float, after_p50: float, calm_during_p50: float, other: float = 0.0,
         late: int = 0) -> dict[str, Any]:
    burst = {"shed": {"status": 503, "n": 50, "p50_ms": 2.0, "p99_ms": shed_p99},
             "ok": {"status": 200, "n": 80, "p50_ms": 40.0, "p99_ms": 300.0},
             "cpu": {"server_cores": 1.0, "client_cores": 0.5, "other_cores": other},
             "codes": {"200": 80, "503": 50, **({"504": late} if late else {})}, "retry_after": 50,
             "estimate_error": {"n": 80.0 + late, "p50_ms": -3.0, "p99_ms": 120.0, "late": 30.0}}
    return {
        "overload": {"before": _phase(200, 15.0, 20.0), "burst": burst, "after": _phase(200, after_p50, 22.0),
                     "offered_rps": 390.0, "capacity_rps": 130.0, "rss_mib": [260.0, 300.0]},
        "rate_limit": {"alone": _phase(200, 10.0, 12.0), "during": _phase(200, calm_during_p50, 15.0),
                       "flood": {"limited": {"status": 429, "n": 900, "p50_ms": 1.0, "p99_ms": 3.0},
                                 "codes": {"429": 900}}, "flood_rps": 200.0},
    }


def test_checks_are_ratios_against_the_same_runs_baselines() -> None:
    good = checks(_run(shed_p99=30.0, after_p50=16.0, calm_during_p50=12.0))
    assert {k: c["pass"] for k, c in good.items()} == {"shed": True, "recovery": True, "isolation": True,
                                                       "deadlines": True}
    assert good["shed"]["ratio"] == 30.0 / 20.0
    bad = checks(_run(shed_p99=50.0, after_p50=30.0, calm_during_p50=25.0, late=1))
    assert {k: c["pass"] for k, c in bad.items()} == {"shed": False, "recovery": False, "isolation": False,
                                                      "deadlines": False}


def test_table_shows_every_phase_each_check_and_warns_when_the_machine_was_busy() -> None:
    result = _run(shed_p99=30.0, after_p50=16.0, calm_during_p50=12.0)
    result["checks"] = checks(result)
    table = format_result(result)
    assert "overload: before" in table and "rate limit: calm key during the flood" in table
    assert table.count("PASS") == 4 and "WARNING" not in table
    assert "estimate error (completion - predicted) over the burst: p50 -3 ms, p99 120 ms" in table
    noisy = _run(shed_p99=30.0, after_p50=16.0, calm_during_p50=12.0, other=0.9)
    assert "WARNING" in format_result(noisy)


def test_percentile_of_few_values() -> None:
    assert pct([5.0], 99) == 5.0
    assert pct(list(map(float, range(1, 101))), 50) == 50.5


_METRICS = """# TYPE inference_admission_estimate_error_seconds histogram
inference_admission_estimate_error_seconds_bucket{le="-0.1",model="m"} 1.0
inference_admission_estimate_error_seconds_bucket{le="0.0",model="m"} 5.0
inference_admission_estimate_error_seconds_bucket{le="0.1",model="m"} 9.0
inference_admission_estimate_error_seconds_bucket{le="+Inf",model="m"} 10.0
inference_admission_estimate_error_seconds_bucket{le="+Inf",model="other"} 99.0
"""


def test_estimate_error_is_read_from_the_histogram_as_prometheus_does() -> None:
    cum = buckets(_METRICS, "m")
    assert cum == {-0.1: 1.0, 0.0: 5.0, 0.1: 9.0, math.inf: 10.0}
    assert quantile(cum, 0.5) == 0.0  # rank 5 of 10: the top of the (-0.1, 0] bucket
    assert quantile(cum, 0.7) == pytest.approx(0.05)  # rank 7: halfway through the 4 counts of (0, 0.1]
    assert quantile(cum, 0.05) == -0.1  # in the lowest bucket: its bound
    assert quantile(cum, 0.99) == 0.1  # in +Inf: the highest finite bound
    assert math.isnan(quantile({}, 0.5))
    phase = delta({-0.1: 1.0, 0.0: 1.0, 0.1: 1.0, math.inf: 1.0}, cum)
    assert summary(phase) == {"n": 9.0, "p50_ms": pytest.approx(1000 * quantile(phase, 0.5)),
                              "p99_ms": 100.0, "late": 5.0}
