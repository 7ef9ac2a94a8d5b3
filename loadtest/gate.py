"""The SLO gate and the run summary: command-line options, statistics and the exit status.

``--slo-fail-ratio``, ``--slo-p95-ms``, ``--slo-p99-ms`` and ``--slo-min-rps`` are checked when the
run ends (``events.quitting``, on the master or the local runner) against locust's own statistics;
a miss sets the process exit status to 1 (locust's ``--exit-code-on-error`` only looks at failures).
One line ``LOCUST_SUMMARY {json}`` goes to stdout, and to ``--summary-file`` when given.

The extra series (``SHED`` for load shedding, ``SERVER`` for the Server-Timing stages) are kept out
of locust's "Aggregated" row, so it, the gate and the report's totals count real requests only.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats, StatsEntry

from loadtest.slo import evaluate

log = logging.getLogger(__name__)
#: request types that are series of their own, not requests: kept out of the Aggregated row
SIDE_SERIES = ("SHED", "SERVER")


def add_options(parser: Any) -> None:
    """The scenario's and the gate's options (also LOCUST_* environment variables and the web UI)."""
    g = parser.add_argument_group("imgserve scenario (loadtest/scenarios.py)")
    g.add_argument("--model", env_var="LOCUST_MODEL", default="", help="model query parameter (default: the "
                   "service's default model)")
    g.add_argument("--top-k", env_var="LOCUST_TOP_K", type=int, default=10, help="top_k is random in 1..N")
    g.add_argument("--images", env_var="LOCUST_IMAGES", default="", help="post every image in this folder "
                   "(default: scikit-image's photos as small/large JPEG, PNG, WebP)")
    g.add_argument("--labels", env_var="LOCUST_LABELS", default="", help="the model's labels.txt: every "
                   "predicted label must be its entry (default: each index keeps one label during the run)")
    g.add_argument("--invalid-share", env_var="LOCUST_INVALID_SHARE", type=float, default=0.0,
                   help="share of requests with an invalid image, correct when they get their documented 4xx")
    g.add_argument("--invalid-schedule", env_var="LOCUST_INVALID_SCHEDULE", choices=("random", "even"),
                   default="random", help="random: each request invalid with that probability; even: exactly that "
                   "share, evenly spaced from the first request on (reproducible, for CI)")
    g.add_argument("--max-backoff-s", type=float, default=5.0, help="cap on the back-off a 503 Retry-After asks for")
    g.add_argument("--user-rate", type=float, default=1.0, help="requests/s of each open-loop user")
    g.add_argument("--ramp", default="10:5,30:10,10:30,20:10", help="ramp shape (loadtest/ramp.py): "
                   "seconds:req/s stages, default warm-up, steady, spike, recovery")
    g.add_argument("--steps", default="5,10,20,40,60,80,100,120", help="stepped shape (loadtest/steps.py): "
                   "arrival rates in req/s, one per step")
    g.add_argument("--step-seconds", type=float, default=20.0, help="length of each step")
    g.add_argument("--capacity-p99-ms", type=float, default=250.0, help="the p99 SLO for the capacity answer")
    s = parser.add_argument_group("SLO gate (loadtest/gate.py): exit status 1 when a threshold is missed")
    for flag, what in (("--slo-fail-ratio", "highest share of failed requests, 0..1"),
                       ("--slo-p95-ms", "highest p95 latency in ms"), ("--slo-p99-ms", "highest p99 latency in ms"),
                       ("--slo-min-rps", "lowest throughput in requests/s")):
        s.add_argument(flag, env_var="LOCUST_" + flag[2:].upper().replace("-", "_"), type=float, default=None,
                       help=what)
    s.add_argument("--summary-file", env_var="LOCUST_SUMMARY_FILE", default="",
                   help="also write the summary JSON to this file")


def exclude_side_series(stats: RequestStats) -> None:
    """Keep ``SIDE_SERIES`` samples out of ``stats.total`` (the Aggregated row) but in their own rows."""
    original = stats.log_request

    def log_request(method: str, name: str, response_time: int, content_length: int) -> None:
        if method in SIDE_SERIES:
            stats.get(name, method).log(response_time, content_length)
        else:
            original(method, name, response_time, content_length)

    stats.log_request = log_request  # type: ignore[method-assign]


def summary(stats: RequestStats) -> dict[str, Any]:
    """The run in numbers: requests, failures, shed, latency percentiles, throughput, Server-Timing means."""
    total: StatsEntry = stats.total
    shed = sum(e.num_requests for (_, method), e in stats.entries.items() if method == "SHED")
    server = {name: round(e.avg_response_time, 2) for (name, method), e in stats.entries.items()
              if method == "SERVER" and e.num_requests}
    pct = {f"p{p}_ms": total.get_response_time_percentile(p / 100) if total.num_requests else None
           for p in (50, 95, 99)}
    return {"requests": total.num_requests, "failures": total.num_failures, "fail_ratio": round(total.fail_ratio, 6),
            "shed": shed, **pct, "avg_ms": round(total.avg_response_time, 2), "rps": round(total.total_rps, 2),
            "server_timing_avg_ms": server}


@events.init_command_line_parser.add_listener
def _parser(parser: Any, **_kw: Any) -> None:
    add_options(parser)


@events.init.add_listener
def _init(environment: Environment, **_kw: Any) -> None:
    exclude_side_series(environment.stats)
    opts = environment.parsed_options
    if opts is not None and opts.headless and not isinstance(environment.runner, WorkerRunner) and not (
            opts.csv_prefix and opts.html_file):
        log.warning("headless run without --csv and --html: only the summary line will be left (make loadtest "
                    "writes both)")


@events.quitting.add_listener
def _quitting(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    result = summary(environment.stats)
    result["slo"] = evaluate(result, opts)
    result["pass"] = all(c["pass"] for c in result["slo"].values())
    extra = getattr(environment, "capacity", None)  # set by loadtest.shapes.StepShape
    if extra is not None:
        result["capacity"] = extra
    line = json.dumps(result, sort_keys=True)
    print(f"LOCUST_SUMMARY {line}", file=sys.stdout, flush=True)
    if opts.summary_file:
        Path(opts.summary_file).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.summary_file).write_text(line + "\n")
    for name, c in result["slo"].items():
        log.log(logging.INFO if c["pass"] else logging.ERROR, "SLO %s: %s (limit %s) %s", name, c["value"],
                c["limit"], "PASS" if c["pass"] else "FAIL")
    if result["slo"]:  # thresholds given: they decide (a failure ratio under its limit passes)
        environment.process_exit_code = 0 if result["pass"] else 1
