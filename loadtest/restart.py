"""``python -m loadtest.restart``: how long a crashed engine process takes to serve again (issue 26).

Starts the service with ``--processes 2`` (optionally held to a CPU quota: ``loadtest.cpucap``) and
times its cold start (process start to readiness); puts light load on it (a few clients, each posting a
photo, pausing ``--think-ms`` between requests); then ``--kills`` times, ``--settle-s`` apart, SIGKILLs
the engine process and times, from the kill, the first 200 answered to a request sent after it
(restart-to-first-200), counting the answers meanwhile. The new engine's log lines (load, compiled-model
cache, warm-up, ready) are kept for the breakdown. Prints a table and writes
``loadtest/results/restart-<timestamp>.json`` and ``restart-latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import platform
import re
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest import cpucap
from loadtest.images import sample_jpegs
from loadtest.report import write_results
from loadtest.server_process import HOST, Server, free_port
from service.supervisor import RESTART_BACKOFF_S

RESULTS = Path(__file__).with_name("results")
#: the engine's log lines worth keeping per restart (what it loaded, cached, warmed and when it was ready)
KEEP = re.compile(r"engine started|loaded |compiled|cache|warmed|warm-up|ready: versions")


def log(msg: str) -> None:
    print(f"[restart {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Answers:
    """Every answer the clients got: (monotonic start, monotonic end, status or error name)."""

    rows: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, start: float, end: float, what: str) -> None:
        with self.lock:
            self.rows.append((start, end, what))

    def first_200_after(self, t: float) -> float | None:
        with self.lock:
            ends = [e for s, e, w in self.rows if s >= t and w == "200"]
        return min(ends) - t if ends else None

    def between(self, t0: float, t1: float) -> dict[str, int]:
        with self.lock:
            return dict(Counter(w for s, _, w in self.rows if t0 <= s < t1))


def _post(port: int, body: bytes) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", "/classify", body=body, headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def client(port: int, body: bytes, think_s: float, answers: Answers, stop: threading.Event) -> None:
    """One closed-loop client with a pause between requests (a refused connection is retried after it)."""
    while not stop.is_set():
        t = time.monotonic()
        what = _post(port, body)
        answers.add(t, time.monotonic(), what)
        stop.wait(think_s)


def engine_pids(server: Server) -> list[int]:
    text = server.log.read_text(errors="replace")
    return [int(p) for p in re.findall(r"engine started \(pid (\d+)\)", text)]


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Poll ``check()`` every 20 ms until true; seconds waited (raises on timeout)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def engine_lines(server: Server, pid: int) -> list[str]:
    """The log lines of engine ``pid`` (from its "engine started" line on) that say what its start did."""
    text = server.log.read_text(errors="replace")
    start = text.find(f"engine started (pid {pid})")
    return [ln.strip() for ln in text[start:].splitlines() if KEEP.search(ln)][:40] if start >= 0 else []


def kill_and_time(server: Server, port: int, answers: Answers, timeout: float) -> dict[str, Any]:
    victim = engine_pids(server)[-1]
    count = len(engine_pids(server))
    wait_until("a 200 under load", lambda: answers.first_200_after(time.monotonic() - 1.0) is not None, timeout)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until("a 200 after the kill", lambda: answers.first_200_after(killed) is not None, timeout)
    first = answers.first_200_after(killed)
    assert first is not None
    new = engine_pids(server)[count:]
    return {"engine_pid": victim, "restart_to_first_200_s": round(first, 3),
            "answers_meanwhile": answers.between(killed, killed + first),
            "engine_log": engine_lines(server, new[0]) if new else []}


@contextlib.contextmanager
def service(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[Server, float]]:
    """The service under test, capped from its first instruction on; yields it and its start-to-ready time."""
    port = free_port()
    argv = [sys.executable, "-m", "service", "--model-repo", str(args.repo), "--models", args.model,
            "--host", HOST, "--port", str(port), "--grpc-port", "0", "--processes", str(args.processes),
            "--log-level", "INFO", *shlex.split(args.service_args)]
    t0 = time.monotonic()
    server = Server("service", argv, port, workdir / f"service-{port}.log")
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        if args.cpu_quota:
            group = stack.enter_context(cpucap.cap(server.pid, args.cpu_quota, args.cpu_period_ms))
            log(f"service {server.pid} held to {args.cpu_quota:g} of each core ({group.path})")
        server.wait_ready("/health/ready", args.ready_timeout)
        yield server, time.monotonic() - t0


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    body = sample_jpegs()[args.image]
    with service(args, workdir) as (server, cold_s):
        log(f"cold start to ready: {cold_s:.1f} s; light load: {args.clients} clients, {args.think_ms:g} ms pauses")
        answers, stop = Answers(), threading.Event()
        threads = [threading.Thread(target=client, args=(server.port, body, args.think_ms / 1000, answers, stop),
                                    daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        kills = []
        try:
            for i in range(args.kills):
                time.sleep(args.settle_s)  # the supervisor holds back a restart of an engine up < RESTART_BACKOFF_S
                kills.append(kill_and_time(server, server.port, answers, args.ready_timeout))
                log(f"kill {i + 1}: first 200 after {kills[-1]['restart_to_first_200_s']:.2f} s "
                    f"({kills[-1]['answers_meanwhile']})")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    times = [k["restart_to_first_200_s"] for k in kills]
    return {"cold_start_to_ready_s": round(cold_s, 3), "kills": kills,
            "restart_to_first_200_s": {"median": statistics.median(times), "min": min(times), "max": max(times)}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.restart", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"), help="Triton-layout model repository")
    ap.add_argument("--model", default="resnet50", help="the model to serve")
    ap.add_argument("--processes", type=int, default=2, help="front ends (2 or more: a separate engine process)")
    ap.add_argument("--kills", type=int, default=3, help="engine kills (each timed)")
    ap.add_argument("--settle-s", type=float, default=RESTART_BACKOFF_S + 2,
                    help="seconds of load before each kill (an engine killed sooner after its start is restarted "
                         "only after the supervisor's crash-loop backoff)")
    ap.add_argument("--clients", type=int, default=2, help="closed-loop clients of the light load")
    ap.add_argument("--think-ms", type=float, default=100.0, help="each client's pause between requests")
    ap.add_argument("--image", choices=sorted(sample_jpegs()), default="coffee.jpg", help="photo that is posted")
    ap.add_argument("--service-args", default="", help="extra service flags, one quoted string")
    ap.add_argument("--cpu-quota", type=float, default=0.0,
                    help="hold the service to this fraction of each core (cgroup quota, needs root): 0.25 makes "
                         "this machine about 4x slower; 0 (default): no quota")
    ap.add_argument("--cpu-period-ms", type=float, default=100.0, help="the quota's period")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness / a 200")
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = ap.parse_args(argv)
    if args.processes < 2:
        ap.error("--processes must be 2 or more: with 1 there is no engine process to kill")
    return args


def main(argv: list[str] | None = None) -> int:
    from loadtest.bench import cpu_info

    args = parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k.startswith(("IMGSERVE_", "ONEDNN_", "OV_"))}
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label,
        "environment": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_info(), "env": env,
                        "loadavg_start": os.getloadavg()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="restart-") as tmp:
        result.update(measure(args, Path(tmp)))
    result["environment"]["loadavg_end"] = os.getloadavg()
    r = result["restart_to_first_200_s"]
    quota = f"CPU quota {args.cpu_quota:g}/core" if args.cpu_quota else "no CPU quota"
    print(f"{args.model}, --processes {args.processes}, {quota} {args.service_args}".rstrip())
    print(f"  cold start to ready      {result['cold_start_to_ready_s']:7.2f} s")
    print(f"  restart to first 200     {r['median']:7.2f} s median of {args.kills} "
          f"(min {r['min']:.2f}, max {r['max']:.2f})")
    for line in result["kills"][-1]["engine_log"]:
        print(f"    {line[:150]}")
    path = write_results(args.out, result, "restart", "restart-latest.json")
    print(f"\nresults: {path} (and {path.with_name('restart-latest.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
