"""CI smoke: real locust runs (subprocesses) against a real service on 127.0.0.1, bounded in time.

1. The closed-loop locustfile for 8 s with a 10 % share of invalid images on the even schedule (the
   first request is one, then every tenth: no luck needed) and the SLO gate on failures: exit 0, no
   failure, the summary line, CSV (with the Server-Timing series) and the HTML report.
2. An SLO that cannot be met: exit status 1.
3. The stepped open-loop shape for 2 x 4 s: the summary line carries a capacity answer per step.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.server_process import free_port, running, service_argv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service_url(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("locust-service") / "service.log"
    with running("service", service_argv(model_repo, "resnet18", port, []), port, log, "/health/ready", 120) as srv:
        yield srv.url


def locust(*args: str, timeout: float = 60) -> tuple[int, str, dict[str, object]]:
    """Run locust headless; (exit status, output, the LOCUST_SUMMARY line's JSON)."""
    proc = subprocess.run([sys.executable, "-m", "locust", "--headless", "--only-summary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("LOCUST_SUMMARY ")]
    assert len(lines) == 1, out
    return proc.returncode, out, json.loads(lines[0].split(" ", 1)[1])


@pytest.mark.slow
def test_closed_loop_run_has_no_failures_and_a_report(service_url: str, tmp_path: Path) -> None:
    rc, out, summary = locust(
        "-f", "loadtest/locustfile.py", "--host", service_url, "-u", "6", "-r", "6", "-t", "8s",
        "--invalid-share", "0.1", "--invalid-schedule", "even", "--slo-fail-ratio", "0", "--slo-p99-ms", "30000",
        "--csv", str(tmp_path / "locust"), "--csv-full-history", "--html", str(tmp_path / "report.html"),
        "--summary-file", str(tmp_path / "summary.json"))
    assert rc == 0, out
    # how many requests 8 s hold is a throughput figure (the benchmark's); that they ran is the behaviour
    assert summary["failures"] == 0 and summary["requests"] > 0 and summary["pass"] is True, summary
    assert set(summary["server_timing_avg_ms"]) == {"queue", "preprocess", "infer"}  # type: ignore[arg-type]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    assert ("SERVER", "infer") in rows and ("", "Aggregated") in rows
    assert any(t == "POST" and "invalid" in n for t, n in rows), "no invalid image was sent"
    assert all(int(r["Failure Count"]) == 0 for r in rows.values())
    real = sum(int(r["Request Count"]) for (t, _), r in rows.items() if t not in ("", "SERVER", "SHED"))
    assert int(rows[("", "Aggregated")]["Request Count"]) == real  # the side series stay out of the total
    history = (tmp_path / "locust_stats_history.csv").read_text().splitlines()
    assert len(history) > 5
    html = (tmp_path / "report.html").read_text()
    assert "<html" in html.lower() and "/classify [1 image, " in html  # which photo kinds ran is random


@pytest.mark.slow
def test_slo_miss_fails_the_run(service_url: str) -> None:
    rc, out, summary = locust("-f", "loadtest/locustfile.py", "--host", service_url, "-u", "2", "-r", "2",
                              "-t", "2s", "--slo-p99-ms", "0.001", "--slo-min-rps", "100000")
    assert rc == 1, out
    assert summary["pass"] is False and summary["slo"]["rps"]["pass"] is False  # type: ignore[index]


@pytest.mark.slow
def test_stepped_open_loop_run_answers_capacity(service_url: str) -> None:
    rc, out, summary = locust("-f", "loadtest/steps.py", "--host", service_url, "--steps", "5,10",
                              "--step-seconds", "4", "--capacity-p99-ms", "30000")
    assert rc == 0, out
    cap = summary["capacity"]
    steps = cap["steps"]  # type: ignore[index]
    assert [s["rate"] for s in steps] == [5.0, 10.0], cap
    assert all(s["requests"] > 0 and s["failures"] == 0 and s["p99_ms"] is not None for s in steps), cap
    # the answer itself depends on the rates achieved in 3 s windows on a shared CI machine: present, not exact
    assert cap["capacity_rps"] in (None, 5.0, 10.0) and cap["slo_p99_ms"] == 30000, cap  # type: ignore[index]
