"""``python -m loadtest.overload``: how fast load shedding and per-key rate limits answer, in one run.

The timed half of ``tests/service/test_overload.py``: the test asserts the behaviour (503 with
Retry-After under overload, no 504 among accepted requests, 200s again afterwards, 429s for a flooding
key and none for a calm one); this script measures the latencies and compares each with a baseline
taken from the same server in the same run. Two servers of one model on loopback, driven by
``loadtest.rawclient`` (ten times cheaper than httpx, so the client leaves the server its CPU):

1. **Overload** (``--service-args``, default a queue of 32 and one inference thread, so the event
   loop keeps a core): a closed loop of 2 clients measures the capacity and a served request's
   latency (``before``); an open loop then offers ``--overload`` x that capacity for
   ``--burst-seconds`` with an ``X-Request-Timeout-Ms`` of ``--deadline-ms`` (``burst``: the 503s and
   the accepted 200s apart); after one settling second, the closed loop again (``after``).
2. **Rate limit**: two API keys limited to ``--rate-limit-rps``; the calm key at 80 % of its limit
   alone, then while the other key floods at 40x its limit.

Checks (ratios within the run, never absolute times):

- shedding is fast: the 503s' p99 during the burst / the 200s' p99 before it <= ``SHED_TARGET`` (a
  refusal, no decode and no inference, under 3x overload takes at most twice a request served unloaded);
- recovery: p50 after / p50 before <= ``RECOVERY_TARGET``;
- isolation: the calm key's p50 during the flood / alone <= ``ISOLATION_TARGET``;
- deadlines: no request accepted during the burst is answered 504 (admission promised it would finish).

It also prints how far admission's completion estimate was off over the burst (completion - predicted,
p50/p99, from the service's ``inference_admission_estimate_error_seconds`` histogram). ``--cpu-quota
0.25`` holds the servers to a quarter of each core (a cgroup quota, ``loadtest.cpucap``; needs root):
this machine then behaves like one about 4x slower, where the estimate matters most.

Prints a table, writes ``loadtest/results/overload-<timestamp>.json`` and ``overload-latest.json``;
exit status 1 when a check fails. Measure on a quiet machine: the table warns when other processes
used more than a quarter of a core meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from loadtest import cpucap, estimate_error
from loadtest.images import sample_jpegs
from loadtest.rawclient import Answer, build, closed_loop, open_loop, run
from loadtest.report import NOISE_WARN, write_results
from loadtest.server_process import free_port, machine_busy_s, proc_cpu_s, running, service_argv

RESULTS = Path(__file__).with_name("results")
#: 503 p99 under overload / 200 p99 unloaded (c=2). Issue 10's bound was an absolute 50 ms, about twice a served
#: resnet18 request's p99 at c=2 on 2 cores (20-30 ms); the 503 p99 measured 2-19 ms there when the cores were quiet.
SHED_TARGET = 2.0
#: p50 after the burst / p50 before it
RECOVERY_TARGET = 1.2
#: the calm key's p50 while another key floods / alone
ISOLATION_TARGET = 2.0
T = TypeVar("T")


# -- the client side, shared with tests/service/test_overload.py ----------------------------------------------
def classify_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    """(host, port, a pre-built ``POST /classify`` with a JPEG body) for ``loadtest.rawclient``."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    return host, port, build("POST", "/classify", f"{host}:{port}", {"Content-Type": "image/jpeg", **(headers or {})},
                             body)


def closed(url: str, body: bytes, clients: int, seconds: float, headers: dict[str, str] | None = None) -> list[Answer]:
    """``clients`` connections, each posting again as soon as it has its answer, for ``seconds``."""
    host, port, req = classify_request(url, body, headers)
    return run(lambda: closed_loop(host, port, req, clients, seconds))


def paced(url: str, body: bytes, rate: float, seconds: float, headers: dict[str, str] | None = None) -> list[Answer]:
    """Arrivals at ``rate`` per second whatever the answers, for ``seconds``; returns once all are answered."""
    host, port, req = classify_request(url, body, headers)
    return run(lambda: open_loop(host, port, req, rate, seconds))


def flood_and_calm(url: str, body: bytes, flood: dict[str, str], calm: dict[str, str], flood_rate: float,
                   calm_rate: float, seconds: float, lead_s: float = 0.5) -> tuple[list[Answer], list[Answer]]:
    """One key floods at ``flood_rate``; ``lead_s`` in, the other posts at ``calm_rate`` for ``seconds``, and the
    flood goes on ``lead_s`` after it: every calm request is sent during the flood. (flood, calm) answers."""
    host, port, flood_req = classify_request(url, body, flood)
    _, _, calm_req = classify_request(url, body, calm)

    async def both() -> tuple[list[Answer], list[Answer]]:
        f = asyncio.create_task(open_loop(host, port, flood_req, flood_rate, seconds + 2 * lead_s))
        await asyncio.sleep(lead_s)  # the schedule: the calm key starts once the flood is under way
        c = await open_loop(host, port, calm_req, calm_rate, seconds)
        return await f, c

    return run(both)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else float("nan"))


def latency(answers: list[Answer], status: int) -> dict[str, Any]:
    ms = [a.ms for a in answers if a.status == status]
    return {"status": status, "n": len(ms), "p50_ms": statistics.median(ms) if ms else float("nan"),
            "p99_ms": pct(ms, 99)}


def codes(answers: list[Answer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in answers:
        key = str(a.status) if a.status is not None else a.error or "no answer"
        out[key] = out.get(key, 0) + 1
    return out


def errors(answers: list[Answer], most: int = 3) -> str:
    """The distinct error bodies among ``answers`` (``most`` of them, with their counts): why, not just how many."""
    seen: dict[tuple[int | None, bytes], int] = {}
    for a in answers:
        if a.body or a.error:
            key = (a.status, a.body or a.error.encode())
            seen[key] = seen.get(key, 0) + 1
    shown = list(seen.items())[:most]
    return "; ".join(f"{n} x {status}: {body.decode(errors='replace')}" for (status, body), n in shown)


# -- measurement ----------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[overload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(pid: int, what: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run ``what``; its result and the seconds, the server's CPU and everything else's (in cores)."""
    t0, busy0, srv0, self0 = time.monotonic(), machine_busy_s(), proc_cpu_s(pid), _self_cpu_s()
    out = what()
    wall = time.monotonic() - t0
    srv, mine = proc_cpu_s(pid) - srv0, _self_cpu_s() - self0
    other = max(0.0, machine_busy_s() - busy0 - srv - mine)
    return out, {"seconds": wall, "server_cores": srv / wall, "client_cores": mine / wall, "other_cores": other / wall}


def measure_overload(args: argparse.Namespace, body: bytes, url: str, pid: int) -> dict[str, Any]:
    log(f"overload: warm-up, closed loop c=2 for {args.warmup:g} s")
    closed(url, body, 2, args.warmup)
    log(f"overload: before, closed loop c=2 for {args.duration:g} s")
    before, cpu_before = timed(pid, lambda: closed(url, body, 2, args.duration))
    capacity = sum(a.status == 200 for a in before) / args.duration
    if not capacity:
        raise SystemExit(f"no request was served in {args.duration:g} s: {codes(before)}")
    rate = args.overload * capacity
    log(f"overload: capacity {capacity:.1f} req/s; burst at {rate:.1f} req/s for {args.burst_seconds:g} s")
    rss0 = rss_mib(pid)
    deadline = {"X-Request-Timeout-Ms": str(args.deadline_ms)}
    hist0 = estimate_error.scrape(url, args.model)
    burst, cpu_burst = timed(pid, lambda: paced(url, body, rate, args.burst_seconds, deadline))
    error = estimate_error.summary(estimate_error.delta(hist0, estimate_error.scrape(url, args.model)))
    rss1 = rss_mib(pid)
    closed(url, body, 2, 1.0)  # settling, unmeasured: what a client sees once the burst is over
    log(f"overload: after, closed loop c=2 for {args.duration:g} s")
    after, cpu_after = timed(pid, lambda: closed(url, body, 2, args.duration))
    return {"capacity_rps": capacity, "offered_rps": rate, "deadline_ms": args.deadline_ms, "rss_mib": [rss0, rss1],
            "before": {"codes": codes(before), "ok": latency(before, 200), "cpu": cpu_before},
            "burst": {"codes": codes(burst), "shed": latency(burst, 503), "ok": latency(burst, 200),
                      "retry_after": sum("retry-after" in a.headers for a in burst if a.status == 503),
                      "cpu": cpu_burst, "estimate_error": error},
            "after": {"codes": codes(after), "ok": latency(after, 200), "cpu": cpu_after}}


def measure_rate_limit(args: argparse.Namespace, body: bytes, url: str, pid: int) -> dict[str, Any]:
    calm, flood = {"Authorization": "Bearer calm-key-1234567890"}, {"Authorization": "Bearer flood-key-1234567890"}
    calm_rate, flood_rate = 0.8 * args.rate_limit_rps, 40 * args.rate_limit_rps
    paced(url, body, calm_rate, 1.0, calm)  # warm-up
    log(f"rate limit: calm key alone at {calm_rate:g} req/s for {args.duration:g} s")
    alone, cpu_alone = timed(pid, lambda: paced(url, body, calm_rate, args.duration, calm))
    log(f"rate limit: calm key at {calm_rate:g} req/s while the flood key sends {flood_rate:g} req/s")
    (flooded, during), cpu_during = timed(
        pid, lambda: flood_and_calm(url, body, flood, calm, flood_rate, calm_rate, args.duration))
    return {"limit_rps": args.rate_limit_rps, "calm_rps": calm_rate, "flood_rps": flood_rate,
            "alone": {"codes": codes(alone), "ok": latency(alone, 200), "cpu": cpu_alone},
            "during": {"codes": codes(during), "ok": latency(during, 200), "cpu": cpu_during},
            "flood": {"codes": codes(flooded), "limited": latency(flooded, 429)}}


# -- checks and the table -------------------------------------------------------------------------------------
def _ratio(num: float, den: float, target: float, what: str) -> dict[str, Any]:
    ratio = num / den if den else float("nan")
    return {"what": what, "value": num, "baseline": den, "ratio": ratio, "target": target, "pass": ratio <= target}


def checks(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    o, r = result.get("overload"), result.get("rate_limit")
    if o:
        out["shed"] = _ratio(o["burst"]["shed"]["p99_ms"], o["before"]["ok"]["p99_ms"], SHED_TARGET,
                             "503 p99 during the burst / 200 p99 before it")
        out["recovery"] = _ratio(o["after"]["ok"]["p50_ms"], o["before"]["ok"]["p50_ms"], RECOVERY_TARGET,
                                 "200 p50 after the burst / before it")
        codes_ = o["burst"]["codes"]
        out["deadlines"] = _ratio(codes_.get("504", 0), codes_.get("504", 0) + codes_.get("200", 0), 0.0,
                                  "504s among the burst's accepted requests / accepted")
    if r:
        out["isolation"] = _ratio(r["during"]["ok"]["p50_ms"], r["alone"]["ok"]["p50_ms"], ISOLATION_TARGET,
                                  "calm key 200 p50 during the flood / alone")
    return out


def _row(phase: str, lat: dict[str, Any], cpu: dict[str, float] | None, counts: dict[str, int] | None) -> str:
    cores = (f"{100 * cpu['server_cores']:6.0f}% {100 * cpu['client_cores']:6.0f}% {100 * cpu['other_cores']:6.0f}%"
             if cpu else f"{'':7} {'':7} {'':7}")
    answers = " ".join(f"{k}:{v}" for k, v in sorted((counts or {}).items()))
    return f"{phase:44} {lat['status']:>6} {lat['n']:6d} {lat['p50_ms']:8.1f} {lat['p99_ms']:8.1f}  {cores}  {answers}"


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{'phase':44} {'status':>6} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}  {'server':>7} {'client':>7} "
             f"{'other':>7}  answers"]
    o, r = result.get("overload"), result.get("rate_limit")
    if o:
        burst = f"burst {o['offered_rps']:.0f} req/s ({o['offered_rps'] / o['capacity_rps']:.1f}x)"
        b = o["burst"]
        lines += [_row("overload: before (closed, c=2)", o["before"]["ok"], o["before"]["cpu"], o["before"]["codes"]),
                  _row(f"overload: {burst}, shed", b["shed"], b["cpu"], b["codes"]),
                  _row(f"overload: {burst}, accepted", b["ok"], None, None),
                  _row("overload: after (closed, c=2)", o["after"]["ok"], o["after"]["cpu"], o["after"]["codes"])]
    if r:
        lines += [_row("rate limit: calm key alone", r["alone"]["ok"], r["alone"]["cpu"], r["alone"]["codes"]),
                  _row("rate limit: calm key during the flood", r["during"]["ok"], r["during"]["cpu"],
                       r["during"]["codes"]),
                  _row(f"rate limit: flood key ({r['flood_rps']:g} req/s)", r["flood"]["limited"], None,
                       r["flood"]["codes"])]
    phases = [p for block in (o or {}, r or {}) for p in block.values() if isinstance(p, dict) and "cpu" in p]
    other = max((p["cpu"]["other_cores"] for p in phases), default=0.0)
    if other > NOISE_WARN:
        lines.append(f"WARNING  other processes used up to {100 * other:.0f}% of a core during the runs: these "
                     "numbers are noisy, rerun on a quiet machine")
    if o:
        lines.append(f"info     capacity {o['capacity_rps']:.1f} req/s; RSS {o['rss_mib'][0]:.0f} -> "
                     f"{o['rss_mib'][1]:.0f} MiB over the burst; {o['burst']['retry_after']} of "
                     f"{o['burst']['shed']['n']} 503s carried Retry-After; 503 p99 / accepted 200 p50 during "
                     f"the burst {o['burst']['shed']['p99_ms'] / o['burst']['ok']['p50_ms']:.2f}")
    e, quota = (o or {}).get("burst", {}).get("estimate_error"), result.get("args", {}).get("cpu_quota")
    if o and e:
        lines.append(f"info     admission estimate error (completion - predicted) over the burst: p50 "
                     f"{e['p50_ms']:.0f} ms, p99 {e['p99_ms']:.0f} ms, {e['late']:.0f} of {e['n']:.0f} later than "
                     f"predicted; 504s: {o['burst']['codes'].get('504', 0)}"
                     + (f"; server held to {quota:g} of each core (cgroup quota)" if quota else ""))
    for c in result.get("checks", {}).values():
        lines.append(f"check    {c['what']} = {c['value']:.1f} / {c['baseline']:.1f} = {c['ratio']:.2f} "
                     f"(target <= {c['target']:.2f})  {'PASS' if c['pass'] else 'FAIL'}")
    return "\n".join(lines)


# -- the script -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.overload", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"), help="Triton-layout model repository")
    ap.add_argument("--model", default="resnet18", help="the model to serve")
    ap.add_argument("--image", choices=sorted(sample_jpegs()), default="coffee.jpg", help="photo that is posted")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds of each closed-loop / calm-key phase")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    ap.add_argument("--overload", type=float, default=3.0, help="burst arrival rate as a multiple of the capacity")
    ap.add_argument("--burst-seconds", type=float, default=6.0, help="length of the burst")
    ap.add_argument("--deadline-ms", type=float, default=2000.0, help="X-Request-Timeout-Ms of the burst's requests")
    ap.add_argument("--service-args", default="--max-queue-size 32 --intra-op-threads 1",
                    help="flags for the overload server, one quoted string")
    ap.add_argument("--cpu-quota", type=float, default=0.0,
                    help="hold the servers to this fraction of each core (a cgroup CPU quota, needs root): 0.25 "
                         "makes this machine about 4x slower; 0 (default): no quota")
    ap.add_argument("--cpu-period-ms", type=float, default=100.0,
                    help="the quota's period (the kernel's and Kubernetes' default 100 ms throttles in bursts; "
                         "shorter is closer to a uniformly slow CPU)")
    ap.add_argument("--rate-limit-rps", type=float, default=5.0, help="per-key limit of the rate-limit server")
    ap.add_argument("--skip", choices=("overload", "rate-limit"), action="append", default=[], help="skip a part")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for a server to be ready")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    return ap.parse_args(argv)


@contextlib.contextmanager
def capped(args: argparse.Namespace, pid: int) -> Iterator[None]:
    """The server ``pid`` held to ``--cpu-quota`` of each core while the context lasts (nothing when 0)."""
    if not args.cpu_quota:
        yield
        return
    with cpucap.cap(pid, args.cpu_quota, args.cpu_period_ms) as group:
        log(f"server {pid} held to {args.cpu_quota:g} of each core ({group.path}, period {args.cpu_period_ms:g} ms)")
        yield
        log(f"the quota held the server back {group.throttled_s():.1f} s in all")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loadtest.bench import cpu_info

    body = sample_jpegs()[args.image]
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "cpu": cpu_info(), "loadavg_start": os.getloadavg()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "image": {"name": args.image, "bytes": len(body)}}
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        if "overload" not in args.skip:
            port = free_port()
            argv_ = service_argv(args.repo, args.model, port, shlex.split(args.service_args))
            log(f"overload: starting the service on 127.0.0.1:{port} ({args.service_args})")
            log_ = Path(tmp) / "overload.log"
            with running("service", argv_, port, log_, "/health/ready", args.ready_timeout) as s, capped(args, s.pid):
                result["overload"] = measure_overload(args, body, s.url, s.pid)
        if "rate-limit" not in args.skip:
            keys = Path(tmp) / "keys.txt"
            keys.write_text("flood:flood-key-1234567890\ncalm:calm-key-1234567890\n")
            port = free_port()
            argv_ = service_argv(args.repo, args.model, port, [
                "--api-keys-file", str(keys), "--rate-limit-rps", f"{args.rate_limit_rps:g}",
                "--rate-limit-burst", f"{max(1, round(args.rate_limit_rps))}"])
            log(f"rate limit: starting the service on 127.0.0.1:{port}")
            log_ = Path(tmp) / "rate.log"
            with running("service", argv_, port, log_, "/health/ready", args.ready_timeout) as s, capped(args, s.pid):
                result["rate_limit"] = measure_rate_limit(args, body, s.url, s.pid)
    result["environment"]["loadavg_end"] = os.getloadavg()
    result["checks"] = checks(result)
    print(format_result(result))
    path = write_results(args.out, result, "overload", "overload-latest.json")
    print(f"\nresults: {path} (and {path.with_name('overload-latest.json')})")
    return 0 if all(c["pass"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
