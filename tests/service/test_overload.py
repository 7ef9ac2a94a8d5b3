"""Overload, drain and a flooding client (issue 10): a real server on loopback, a real model, bounded
load from an asyncio client (``loadtest.overload``'s, the benchmark's own).

Behaviour only: shed with 503 + Retry-After, zero 504 among accepted requests, nothing accepted lost,
memory bounded, 200s again afterwards, 429s for a flooding key and none for a calm one. How fast the
503s, the recovery and the calm key are is timing, measured as ratios within one run by
``python -m loadtest.overload`` (loadtest/README.md), never asserted here: a busy machine beside the
test moves those figures, not the behaviour. The figures are printed (``pytest -s``) for information.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path

import httpx
import pytest

from loadtest import cpucap, estimate_error
from loadtest.overload import classify_request, closed, codes, errors, flood_and_calm, paced, pct, rss_mib
from loadtest.rawclient import CLOSED_BEFORE_ANSWER, Answer, closed_loop, run
from loadtest.server_process import proc_cpu_s
from tests.service.conftest import start_server

pytestmark = pytest.mark.slow
#: the slow CPU's capacity: its 32-image queue then takes twice the 2 s deadline to drain
SLOW_RPS = 8.0


def test_overload_sheds_with_retry_after_and_recovers(model_repo: Path, tmp_path: Path,
                                                      photos: dict[str, bytes]) -> None:
    # One core for inference, one for the event loop, decoding and this client (the benchmark's default).
    srv = start_server(model_repo, tmp_path, "--max-queue-size", "32", "--intra-op-threads", "1")
    body = photos["coffee.jpg"]
    try:
        closed(srv.url, body, 2, 2.0)  # warm
        before = closed(srv.url, body, 2, 4.0)
        capacity = sum(a.status == 200 for a in before) / 4.0
        rss0 = rss_mib(srv.proc.pid)
        # 3x the capacity measured just now: the 32-image queue fills within the first seconds, whatever the
        # machine's speed, since the offered rate is relative to it
        hist0 = estimate_error.scrape(srv.url, "resnet18")
        burst = paced(srv.url, body, 3 * capacity, 6.0, {"X-Request-Timeout-Ms": "2000"})
        error = estimate_error.summary(estimate_error.delta(hist0, estimate_error.scrape(srv.url, "resnet18")))
        rss1 = rss_mib(srv.proc.pid)
        # paced() returned once every burst request had its answer: nothing is queued any more
        after = closed(srv.url, body, 2, 2.0)
        ready = httpx.get(f"{srv.url}/health/ready", timeout=30)
    finally:
        srv.stop()
    shed = [o for o in burst if o.status == 503]
    accepted = [o for o in burst if o.status not in (503, None)]
    print(f"\noverload: capacity {capacity:.1f} req/s; offered {3 * capacity:.1f} req/s for 6 s = {len(burst)} "
          f"requests -> {codes(burst)}; 503 p99 {pct([o.ms for o in shed], 99):.1f} ms vs 200 p99 before "
          f"{pct([o.ms for o in before if o.status == 200], 99):.0f} ms; RSS {rss0:.0f} -> {rss1:.0f} MiB; "
          f"after: {codes(after)}; admission estimate error p50 {error['p50_ms']:.0f} ms, p99 {error['p99_ms']:.0f} ms "
          "(timing: python -m loadtest.overload)")
    assert before and all(o.status == 200 for o in before), f"{codes(before)} {errors(before)}"
    assert shed, "3x capacity must shed load"
    assert all("retry-after" in o.headers for o in shed), "every 503 says when to retry"
    assert all(o.status == 200 for o in accepted), \
        f"accepted requests meet their deadlines: {codes(burst)} {errors(accepted)}"
    assert not [o for o in burst if o.status is None], "no connection errors"
    assert rss1 - rss0 < 150, "memory stays bounded under the burst"
    assert after and all(o.status == 200 for o in after), f"served again after the burst: {codes(after)}"
    assert ready.status_code == 200, ready.text


def test_overload_on_a_slow_cpu_keeps_admissions_promise(model_repo: Path, tmp_path: Path,
                                                        photos: dict[str, bytes]) -> None:
    """The same scenario on a CPU so slow that a full queue takes twice the deadline to drain, so the
    queue bound alone would let accepted requests time out: only the estimate (the pre stage, the
    batch in flight, the cost per batch size) keeps them from 504. Any machine is made that slow,
    relative to its own speed, by a cgroup CPU quota on the server (loadtest.cpucap)."""
    why = cpucap.unusable()
    if why:
        pytest.skip(f"a CPU quota cannot be set here: {why}")
    srv = start_server(model_repo, tmp_path, "--max-queue-size", "32", "--intra-op-threads", "1")
    body, pid = photos["coffee.jpg"], srv.proc.pid
    try:
        closed(srv.url, body, 2, 2.0)  # warm
        cpu0 = proc_cpu_s(pid)
        fast = closed(srv.url, body, 2, 3.0)
        cores = (proc_cpu_s(pid) - cpu0) / 3.0
        quota = cpucap.per_core_for(SLOW_RPS, rate(fast, 3.0), cores)
        with cpucap.cap(pid, quota, cpucap.smooth_period_ms(quota)) as group:
            # the quota that makes this machine serve about SLOW_RPS (the estimate learns the slow machine
            # meanwhile): slower than designed, a single request's noise would fill the deadline
            quota, _ = cpucap.settle(group, quota, lambda: rate(closed(srv.url, body, 2, 2.0), 2.0), SLOW_RPS)
            slow = closed(srv.url, body, 2, 4.0)
            capacity = rate(slow, 4.0)
            hist0 = estimate_error.scrape(srv.url, "resnet18")
            burst = paced(srv.url, body, 3 * capacity, 6.0, {"X-Request-Timeout-Ms": "2000"})
            error = estimate_error.summary(estimate_error.delta(hist0, estimate_error.scrape(srv.url, "resnet18")))
    finally:
        srv.stop()
    accepted = [o for o in burst if o.status not in (503, None)]
    print(f"\nslow CPU ({quota:.3f} of each core): capacity {capacity:.1f} req/s (a full queue drains in "
          f"{32 / max(capacity, 1e-9):.1f} s); offered {3 * capacity:.1f} req/s for 6 s -> {codes(burst)}; admission "
          f"estimate error p50 {error['p50_ms']:.0f} ms, p99 {error['p99_ms']:.0f} ms")
    assert slow and all(o.status == 200 for o in slow), f"{codes(slow)} {errors(slow)}"
    assert any(o.status == 503 for o in burst), "3x capacity must shed load"
    assert accepted and all(o.status == 200 for o in accepted), \
        f"accepted requests meet their deadline: {codes(burst)} {errors(accepted)}"


def rate(answers: list[Answer], seconds: float) -> float:
    return sum(o.status == 200 for o in answers) / seconds


def test_sigterm_under_load_loses_nothing_accepted(model_repo: Path, tmp_path: Path, photos: dict[str, bytes]) -> None:
    srv = start_server(model_repo, tmp_path, "--shutdown-delay-s", "0.5", "--graceful-timeout-s", "10")
    body = photos["coffee.jpg"]
    signalled: list[float] = []
    host, port, req = classify_request(srv.url, body)

    async def scenario() -> list[Answer]:
        async def stop_soon() -> None:
            await asyncio.sleep(2.0)  # the schedule: 2 s of load (8 requests go out at once), then the signal
            signalled.append(time.monotonic())
            os.kill(srv.proc.pid, signal.SIGTERM)

        killer = asyncio.create_task(stop_soon())
        out = await closed_loop(host, port, req, 8, 5.0)
        await killer
        return out

    try:
        outcomes = run(scenario)
        t_sig = signalled[0]
        rc = srv.proc.wait(60)  # a deadline, not a measurement: how long the exit took is printed
        exited_s = time.monotonic() - t_sig
    finally:
        srv.stop()
    before = [o for o in outcomes if o.started < t_sig]
    after = [o for o in outcomes if o.started >= t_sig]
    kinds = {k: sum(1 for o in after if (o.status or o.error) == k) for k in {o.status or o.error for o in after}}
    print(f"\nSIGTERM under load: {len(before)} requests sent before the signal -> "
          f"{sum(o.status == 200 for o in before)} x 200; after it: {kinds}; exit {rc} after {exited_s:.1f} s")
    assert before and all(o.status == 200 for o in before), [o for o in before if o.status != 200][:3]
    # after the delay the listener closes: new connections are refused (or reset, or closed unanswered, while
    # it closes: a connection accepted as the drain began is closed before its request is read)
    assert all(o.status in (200, 503) or o.error in ("ConnectionRefusedError", "ConnectionResetError",
                                                      CLOSED_BEFORE_ANSWER) for o in after), kinds
    logs = srv.logs()
    assert "Traceback" not in logs


def test_a_flooding_key_is_limited_and_another_key_is_not(
    model_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("flood:flood-key-1234567890\ncalm:calm-key-1234567890\n")
    srv = start_server(model_repo, tmp_path, "--api-keys-file", str(keys), "--rate-limit-rps", "5",
                       "--rate-limit-burst", "5")
    body = photos["coffee.jpg"]
    calm = {"Authorization": "Bearer calm-key-1234567890"}
    flood = {"Authorization": "Bearer flood-key-1234567890"}
    try:
        # the flood key at 40x its limit of 5/s, the calm key at 4/s (under its own limit) in the middle of it
        flooded, calm_during = flood_and_calm(srv.url, body, flood, calm, 200, 4, 4.0)
    finally:
        srv.stop()
    limited = sum(o.status == 429 for o in flooded)
    ok = [o.ms for o in calm_during if o.status == 200]
    print(f"\nrate limit: flood key {len(flooded)} requests -> {codes(flooded)}; calm key {codes(calm_during)}, "
          f"p50 {statistics.median(ok) if ok else float('nan'):.0f} ms (timing: python -m loadtest.overload)")
    # the bucket lets through at most its burst plus 5/s of the flood's 5 s: far under half of 1000
    assert limited > len(flooded) / 2 and all("retry-after" in o.headers for o in flooded if o.status == 429)
    assert calm_during and all(o.status == 200 for o in calm_during), codes(calm_during)
