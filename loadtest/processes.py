"""``python -m loadtest.processes``: ``--processes 2`` (two front ends, one engine process) against
``--processes 1`` (one process, no IPC) on one model, in one run, as ratios.

Rounds alternate (1, 2, 1, 2, ...) so drift on a shared machine lands on both. Per point: wrk's
throughput and latency, and the CPU every server process spent per request (the supervisor's whole
tree), so the IPC's cost shows as CPU µs and added p50 at c=1. The gates (issue 16): throughput at
the top concurrency >= 0.9x, and p50 at c=1 within +1 ms. Prints a table and writes
``loadtest/results/processes-<timestamp>.json`` and ``processes-latest.json``.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import report
from loadtest.images import sample_jpegs
from loadtest.server_process import free_port, running, service_argv, wait_idle
from loadtest.wrk import find_wrk, run_wrk

RESULTS = Path(__file__).with_name("results")
MIN_RATIO = 0.9
MAX_ADDED_P50_MS = 1.0


def log(msg: str) -> None:
    print(f"[processes {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.processes", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each mode")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--image", choices=sorted(sample_jpegs()), default="coffee.jpg")
    ap.add_argument("--service-args", default="", help="extra flags for both servers, one quoted string")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def measure(args: argparse.Namespace, processes: int, image: Path, workdir: Path) -> list[dict[str, Any]]:
    port = free_port()
    argv = service_argv(args.repo, args.model, port, ["--processes", str(processes), *shlex.split(args.service_args)])
    log(f"--processes {processes}: starting on port {port}")
    with running(f"p{processes}", argv, port, workdir / f"p{processes}-{port}.log", "/health/ready",
                 args.ready_timeout) as srv:
        url = f"{srv.url}/classify"
        if args.warmup > 0:
            run_wrk(url, image, 8, args.warmup, srv.pid)
            wait_idle(srv.pid)
        points = []
        for c in args.concurrency:
            p = run_wrk(url, image, c, args.duration, srv.pid)
            wait_idle(srv.pid)
            cpu_us = 1e6 * p.server_cpu_s / p.requests if p.requests else float("nan")
            log(f"--processes {processes} c={c}: {p.rps:.1f} req/s p50 {p.p50_ms:.2f} ms p99 {p.p99_ms:.2f} ms "
                f"server CPU {cpu_us:.0f} µs/request, errors {sum(p.errors.values())}")
            points.append({**p.to_json(), "server_cpu_us_per_request": cpu_us})
        return points


def summarise(runs: dict[int, list[list[dict[str, Any]]]], concurrency: list[int]) -> list[dict[str, Any]]:
    """Per concurrency: the median over rounds of each mode, and split / single ratios."""
    rows = []
    for i, c in enumerate(concurrency):
        def med(mode: int, key: str, i: int = i) -> float:
            return statistics.median(r[i][key] for r in runs[mode])
        rows.append({
            "concurrency": c,
            **{f"p{m}_{k}": med(m, k) for m in (1, 2) for k in ("rps", "p50_ms", "p99_ms",
                                                               "server_cpu_us_per_request")},
            "rps_ratio": med(2, "rps") / med(1, "rps"),
            "added_p50_ms": med(2, "p50_ms") - med(1, "p50_ms"),
            "added_cpu_us": med(2, "server_cpu_us_per_request") - med(1, "server_cpu_us_per_request"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.repo / args.model / "config.pbtxt").is_file():  # else each server waits out --ready-timeout
        raise SystemExit(f"no model {args.model!r} in {args.repo} (no {args.model}/config.pbtxt): export it first, "
                         f"e.g. python -m export --arch {args.model} --repo {args.repo}")
    find_wrk()
    runs: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        image = Path(tmp) / args.image
        image.write_bytes(sample_jpegs()[args.image])
        for r in range(args.rounds):
            for mode in (1, 2):
                log(f"round {r + 1}/{args.rounds}")
                runs[mode].append(measure(args, mode, image, Path(tmp)))
    rows = summarise(runs, args.concurrency)
    top, low = rows[-1], rows[0]
    gates = {
        f"c={top['concurrency']} throughput >= {MIN_RATIO}x": top["rps_ratio"] >= MIN_RATIO,
        f"c={low['concurrency']} p50 within +{MAX_ADDED_P50_MS:g} ms": low["added_p50_ms"] <= MAX_ADDED_P50_MS,
    }
    print(f"\n{args.model}, {platform.processor() or platform.machine()}, median of {args.rounds} rounds "
          f"of {args.duration:g} s per point\n")
    print("| c | 1 proc req/s | 2 procs req/s | ratio | p50 1 / 2 (ms) | p99 1 / 2 (ms) | CPU µs/req 1 / 2 |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['concurrency']} | {x['p1_rps']:.1f} | {x['p2_rps']:.1f} | {x['rps_ratio']:.2f} | "
              f"{x['p1_p50_ms']:.2f} / {x['p2_p50_ms']:.2f} | {x['p1_p99_ms']:.2f} / {x['p2_p99_ms']:.2f} | "
              f"{x['p1_server_cpu_us_per_request']:.0f} / {x['p2_server_cpu_us_per_request']:.0f} |")
    for name, ok in gates.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    path = report.write_results(args.out, {"model": args.model, "rows": rows, "gates": gates, "runs": runs,
                                           "args": vars(args) | {"repo": str(args.repo), "out": str(args.out)}},
                                "processes", "processes-latest.json")
    print(f"wrote {path}")
    return 0 if all(gates.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
