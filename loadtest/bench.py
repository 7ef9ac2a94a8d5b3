"""``python -m loadtest.bench``: engine limits vs the HTTP service vs a naive server, in one run.

For each model: (1) the engine limit of every runtime that can serve it on this CPU (OpenVINO, ONNX
Runtime), in process with the service's own preprocessing, the best of them being the ceiling,
(2) the service with default flags under closed-loop wrk load, (3) the same service forced onto ONNX
Runtime at the highest concurrency (the baseline the default runtime is compared with), (4) a naive
one-request-one-run FastAPI server. Prints the CPU and its AMX / AVX-512 VNNI / BF16 flags, a table
with the ratios (service / best engine, p50 vs its latency budget, default / ONNX Runtime service)
and writes ``loadtest/results/bench-<timestamp>.json`` and ``loadtest/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import report
from loadtest.images import sample_jpegs
from loadtest.server_process import free_port, http_get, machine_busy_s, naive_argv, running, service_argv, wait_idle
from loadtest.wrk import LoadPoint, find_wrk, run_wrk

RESULTS = Path(__file__).with_name("results")
_HIST = re.compile(r'^inference_(batch_size|compute_duration_seconds|queue_duration_seconds|'
                   r'preprocess_duration_seconds)_(sum|count)\{model="([^"]+)"\} (\S+)$', re.M)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"), help="Triton-layout model repository")
    ap.add_argument("--models", nargs="+", help="models to measure (default: every model in the repo)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per load point")
    ap.add_argument("--engine-duration", type=float, default=None,
                    help="seconds per engine batch size (default: min(duration, 10))")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load before each server's runs")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="wrk connections per point")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="engine batch sweep")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                    help="engine decode threads (the service's --workers default: one per core)")
    ap.add_argument("--image", choices=sorted(sample_jpegs()), default="coffee.jpg", help="photo that is posted")
    ap.add_argument("--service-args", default="", help="extra flags for `python -m service`, one quoted string")
    ap.add_argument("--runtimes", nargs="+", default=None,
                    help="engine limits to measure (default: every registered runtime that serves the model here)")
    ap.add_argument("--baseline-runtime", default="onnxruntime",
                    help="also serve with --runtime NAME at the top concurrency, for the default/baseline ratio "
                    "('none' skips it)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--no-engine", action="store_true", help="skip the engine limit")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for a server to be ready")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    ap.add_argument("--plot", nargs="?", type=Path, const=RESULTS / "latest.json", default=None, metavar="JSON",
                    help="measure nothing: draw the results JSON (default: loadtest/results/latest.json) as a PNG "
                    "(throughput vs concurrency, latency vs throughput, engine limits, naive baseline)")
    ap.add_argument("--plot-out", type=Path, default=None, help="PNG path for --plot (default: the JSON's, .png)")
    return ap.parse_args(argv)


def repo_models(repo: Path) -> list[str]:
    if not repo.is_dir():
        raise SystemExit(f"model repository {repo} does not exist: `python -m export --arch resnet50 --repo {repo}`")
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    if not names:
        raise SystemExit(f"no model in {repo}: `python -m export --arch resnet50 --repo {repo}`")
    return names


def engine_runtimes(args: argparse.Namespace, kind: str) -> list[str]:
    """Runtimes whose engine limit is measured: --runtimes, else every one that serves ``kind`` on this CPU."""
    from service.runtimes.registry import candidates

    available = [c.info.name for c in candidates(kind, "auto", "cpu")[0]]
    return [r for r in args.runtimes if r in available] if args.runtimes else available


def measure_engine(args: argparse.Namespace, name: str, data: bytes, runtime: str) -> dict[str, Any]:
    from loadtest import engine as eng

    seconds = args.engine_duration or min(args.duration, 10.0)
    e = eng.load_engine(args.repo, name, runtime)
    cpu0, busy0, t0 = _self_cpu_s(), machine_busy_s(), time.monotonic()
    tag = f"{name} [{e.runtime.label} {e.runtime.precision}]"
    try:
        log(f"{tag}: engine decode+preprocess (1 thread) and batch-1 latency")
        pre, b1 = eng.preprocess_ms(e, data), eng.batch1_ms(e, data)
        sweep: dict[str, float] = {}
        for b in args.batch_sizes:
            log(f"{tag}: engine pipelined throughput at batch {b} ({seconds:g} s)")
            sweep[str(b)] = eng.pipelined_throughput(e, data, b, seconds, args.workers)
            log(f"{tag}:   batch {b}: {sweep[str(b)]:.1f} img/s")
        label, precision = e.runtime.label, e.runtime.precision
    finally:
        e.close()
    wall = time.monotonic() - t0
    other = max(0.0, machine_busy_s() - busy0 - (_self_cpu_s() - cpu0)) / wall
    best = max(sweep, key=lambda k: sweep[k])
    return {"runtime": runtime, "label": label, "precision": precision, "preprocess_ms": pre, "batch1_ms": b1,
            "throughput": sweep, "best_batch": int(best), "best_ips": sweep[best], "workers": args.workers,
            "seconds": seconds, "other_cpu": other}


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def histograms(port: int, model: str) -> dict[str, float]:
    """``{metric_sum|count: value}`` of the service's latency/batch histograms for ``model``."""
    try:
        text = http_get(port, "/metrics", timeout=5.0)[1].decode()
    except OSError:
        return {}
    return {f"{m[0]}_{m[1]}": float(m[3]) for m in _HIST.findall(text) if m[2] == model}


def server_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def mean(metric: str, scale: float = 1.0) -> float | None:
        n = after.get(f"{metric}_count", 0.0) - before.get(f"{metric}_count", 0.0)
        return (after[f"{metric}_sum"] - before.get(f"{metric}_sum", 0.0)) / n * scale if n else None

    out = {"mean_batch": mean("batch_size"), "mean_compute_ms": mean("compute_duration_seconds", 1000),
           "mean_queue_ms": mean("queue_duration_seconds", 1000),
           "mean_preprocess_ms": mean("preprocess_duration_seconds", 1000)}
    return {k: v for k, v in out.items() if v is not None}


def measure_server(args: argparse.Namespace, kind: str, name: str, image: Path, workdir: Path,
                   extra: list[str] | None = None, concurrency: list[int] | None = None) -> dict[str, Any]:
    port = free_port()
    argv = (service_argv(args.repo, name, port, [*shlex.split(args.service_args), *(extra or [])])
            if kind == "service" else naive_argv(args.repo, name, port))
    log(f"{name}: starting {kind} on 127.0.0.1:{port}")
    t0 = time.monotonic()
    with running(kind, argv, port, workdir / f"{kind}-{name}.log", "/health/ready", args.ready_timeout) as srv:
        startup = time.monotonic() - t0
        served = served_by(port, name) if kind == "service" else {"runtime": "onnxruntime-cpu (naive)"}
        url = f"{srv.url}/classify"
        if args.warmup > 0:
            log(f"{name}: {kind} ready in {startup:.1f} s; warm-up load c=8 for {args.warmup:g} s")
            run_wrk(url, image, 8, args.warmup, srv.pid)
            wait_idle(srv.pid)
        points: list[LoadPoint] = []
        for c in concurrency or args.concurrency:
            log(f"{name}: {kind} closed loop c={c} for {args.duration:g} s")
            before = histograms(port, name) if kind == "service" else {}
            p = run_wrk(url, image, c, args.duration, srv.pid)
            if kind == "service":
                p.extra.update(server_stats(before, histograms(port, name)))
            # Work left over after wrk stops (requests of closed connections) must not leak into the
            # next point; how long it lasts is reported as drain_s.
            p.extra["drain_s"] = wait_idle(srv.pid)
            log(f"{name}:   c={c}: {p.rps:.1f} img/s p50 {p.p50_ms:.1f} ms p99 {p.p99_ms:.1f} ms "
                f"errors {sum(p.errors.values())}; busy {p.extra['drain_s']:.1f} s after wrk stopped")
            points.append(p)
        log(f"{name}: stopping {kind} (pid {srv.pid})")
    return {"startup_s": startup, "argv": argv[1:], **served, "points": [p.to_json() for p in points]}


def served_by(port: int, name: str) -> dict[str, str]:
    """The runtime and precision the service chose for ``name`` (from /models)."""
    try:
        desc = json.loads(http_get(port, f"/models/{name}", timeout=5.0)[1])
    except (OSError, ValueError):
        return {}
    return {k: str(desc.get(k, "")) for k in ("runtime", "precision", "runtime_choice")}


CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f")


def cpu_info() -> dict[str, Any]:
    """The CPU model and the flags that decide which kernels OpenVINO / ONNX Runtime can use."""
    model, flags = platform.processor(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    out: dict[str, Any] = {"model": model, "flags": {f: f in flags for f in CPU_FLAGS}}
    with contextlib.suppress(ImportError, RuntimeError):
        import openvino

        out["openvino_capabilities"] = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return out


def environment() -> dict[str, Any]:
    import onnxruntime

    env: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "cpu": cpu_info(), "onnxruntime": onnxruntime.__version__, "wrk": find_wrk(),
                           "loadavg_start": os.getloadavg()}
    with contextlib.suppress(ImportError):
        import openvino

        env["openvino"] = openvino.__version__
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot is not None:
        from loadtest.plot import bench_png

        png = bench_png(json.loads(args.plot.read_text()), args.plot_out or args.plot.with_suffix(".png"))
        print(f"plot: {png} ({png.stat().st_size} bytes)")
        return 0
    find_wrk()  # fail early, with the install hint
    from modelrepo.layout import scan_model

    names = args.models or repo_models(args.repo)
    data = sample_jpegs()[args.image]
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(),
                              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "image": {"name": args.image, "bytes": len(data)}, "models": {}}
    print(report.format_cpu(result["environment"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        image = Path(tmp) / args.image
        image.write_bytes(data)
        for name in names:
            entry = scan_model(args.repo / name)
            m: dict[str, Any] = {"int8": report.is_int8(name, entry.params)}
            result["models"][name] = m
            runtimes = engine_runtimes(args, entry.platform)
            if not args.no_engine:
                m["engines"] = {rt: measure_engine(args, name, data, rt) for rt in runtimes}
                if m["engines"]:
                    m["engine"] = max(m["engines"].values(), key=lambda e: e["best_ips"])
            m["service"] = measure_server(args, "service", name, image, Path(tmp))
            base = args.baseline_runtime
            if base != "none" and base in runtimes and m["service"].get(
                    "runtime", "").split("-")[0] != base:
                m["service_baseline"] = measure_server(args, "service", name, image, Path(tmp), ["--runtime", base],
                                                       [max(args.concurrency)])
            if not args.no_naive:
                m["naive"] = measure_server(args, "naive", name, image, Path(tmp))
            m["checks"] = report.checks(m, amx=report.has_amx(result["environment"]))
            print(report.format_model(name, m), flush=True)
    result["environment"]["loadavg_end"] = os.getloadavg()
    print("\n" + report.format_summary(result["models"]))
    path = report.write_results(args.out, result, "bench", "latest.json")
    print(f"\nresults: {path} (and {path.with_name('latest.json')})")
    ok = all(c.get("pass", True) for m in result["models"].values() for c in m["checks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
