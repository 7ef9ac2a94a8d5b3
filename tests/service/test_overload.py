"""Overload, drain and a flooding client, counted (issue 10): a real server on loopback, a real model,
bounded load from an asyncio client. Figures are printed (`pytest -s`) for the README and notes.

On 2 shared cores the client competes with the server: the thresholds are the issue's (503s fast,
zero 504 among accepted requests, p50 back within 20 %, nothing accepted lost), measured as ratios
within one run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from loadtest.rawclient import Answer, build, closed_loop, open_loop, run
from tests.service.conftest import Server, start_server

pytestmark = pytest.mark.slow


def request(srv: Server, body: bytes, **headers: str) -> tuple[str, int, bytes]:
    u = urlsplit(srv.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    hdrs = {"Content-Type": "image/jpeg", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return host, port, build("POST", "/classify", f"{host}:{port}", hdrs, body)


def closed(srv: Server, body: bytes, clients: int, seconds: float, **headers: str) -> list[Answer]:
    host, port, req = request(srv, body, **headers)
    return run(lambda: closed_loop(host, port, req, clients, seconds))


def paced(srv: Server, body: bytes, rate: float, seconds: float, **headers: str) -> list[Answer]:
    host, port, req = request(srv, body, **headers)
    return run(lambda: open_loop(host, port, req, rate, seconds))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def test_overload_sheds_fast_and_recovers(model_repo: Path, tmp_path: Path, photos: dict[str, bytes]) -> None:
    # One core for inference, one for the event loop, decoding and this client: with inference on every
    # core the loop waits for CPU and 503 p99 ranged 8-107 ms run to run; with one left free, 2-19 ms.
    srv = start_server(model_repo, tmp_path, "--max-queue-size", "32", "--intra-op-threads", "1")
    body = photos["coffee.jpg"]
    try:
        closed(srv, body, 2, 2.0)  # warm
        before = closed(srv, body, 2, 4.0)
        ok_before = [o for o in before if o.status == 200]
        capacity = len(ok_before) / 4.0
        p50_before = statistics.median(o.ms for o in ok_before)
        rss0 = rss_mib(srv.proc.pid)
        burst = paced(srv, body, 3 * capacity, 6.0, X_Request_Timeout_Ms="2000")
        rss1 = rss_mib(srv.proc.pid)
        closed(srv, body, 2, 1.0)  # the queue empties
        after = closed(srv, body, 2, 4.0)
        p50_after = statistics.median(o.ms for o in after if o.status == 200)
    finally:
        srv.stop()
    shed = [o for o in burst if o.status == 503]
    accepted = [o for o in burst if o.status not in (503, None)]
    codes = {s: sum(1 for o in burst if o.status == s) for s in {o.status for o in burst}}
    print(f"\noverload: capacity {capacity:.1f} req/s (p50 {p50_before:.0f} ms); offered {3 * capacity:.1f} req/s "
          f"for 6 s = {len(burst)} requests -> {codes}; 503 p99 {pct([o.ms for o in shed], 99):.1f} ms; "
          f"accepted p99 {pct([o.ms for o in accepted], 99):.0f} ms; RSS {rss0:.0f} -> {rss1:.0f} MiB; "
          f"p50 after {p50_after:.0f} ms ({p50_after / p50_before:.2f}x)")
    assert len(shed) > len(burst) / 4, "3x capacity must shed load"
    assert all("retry-after" in o.headers for o in shed), "every 503 says when to retry"
    assert pct([o.ms for o in shed], 99) <= 50, "shedding must be fast"
    assert codes.get(504, 0) == 0 and all(o.status == 200 for o in accepted), "accepted requests meet deadlines"
    assert not [o for o in burst if o.status is None], "no connection errors"
    assert rss1 - rss0 < 150, "memory stays bounded under the burst"
    assert p50_after <= 1.2 * p50_before, "p50 returns within 20 % after the burst"


def test_sigterm_under_load_loses_nothing_accepted(model_repo: Path, tmp_path: Path, photos: dict[str, bytes]) -> None:
    srv = start_server(model_repo, tmp_path, "--shutdown-delay-s", "0.5", "--graceful-timeout-s", "10")
    body = photos["coffee.jpg"]
    signalled: list[float] = []
    host, port, req = request(srv, body)

    async def scenario() -> list[Answer]:
        async def stop_soon() -> None:
            await asyncio.sleep(2.0)
            signalled.append(time.monotonic())
            os.kill(srv.proc.pid, signal.SIGTERM)

        killer = asyncio.create_task(stop_soon())
        out = await closed_loop(host, port, req, 8, 5.0)
        await killer
        return out

    outcomes = run(scenario)
    t_sig = signalled[0]
    rc = srv.proc.wait(20)
    exited_s = time.monotonic() - t_sig
    before = [o for o in outcomes if o.started < t_sig]
    after = [o for o in outcomes if o.started >= t_sig]
    kinds = {k: sum(1 for o in after if (o.status or o.error) == k) for k in {o.status or o.error for o in after}}
    print(f"\nSIGTERM under load: {len(before)} requests sent before the signal -> "
          f"{sum(o.status == 200 for o in before)} x 200; after it: {kinds}; exit {rc} after {exited_s:.1f} s")
    assert before and all(o.status == 200 for o in before), [o for o in before if o.status != 200][:3]
    # after the delay the listener closes: new connections are refused (or reset while it closes)
    assert all(o.status in (200, 503) or o.error in ("ConnectionRefusedError", "ConnectionResetError")
               for o in after), kinds
    assert exited_s <= 0.5 + 10 + 2
    logs = srv.logs()
    assert "Traceback" not in logs


def test_a_flooding_key_is_limited_and_another_key_stays_fast(
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
        paced(srv, body, 4, 1.0, **calm)
        alone = paced(srv, body, 4, 4.0, **calm)  # under its own limit of 5/s
        host, port, flood_req = request(srv, body, **flood)
        _, _, calm_req = request(srv, body, **calm)

        async def both() -> tuple[list[Answer], list[Answer]]:
            f = asyncio.create_task(open_loop(host, port, flood_req, 200, 5.0))  # 40x its limit
            await asyncio.sleep(0.5)
            c = await open_loop(host, port, calm_req, 4, 4.0)
            return await f, c

        flooded, calm_during = run(both)
    finally:
        srv.stop()
    p50_alone = statistics.median(o.ms for o in alone if o.status == 200)
    p50_during = statistics.median(o.ms for o in calm_during if o.status == 200)
    limited = sum(o.status == 429 for o in flooded)
    print(f"\nrate limit: flood key {len(flooded)} requests -> {limited} x 429, "
          f"{sum(o.status == 200 for o in flooded)} x 200; calm key p50 {p50_alone:.0f} ms alone, "
          f"{p50_during:.0f} ms during the flood ({p50_during / p50_alone:.2f}x)")
    assert limited > len(flooded) / 2 and all("retry-after" in o.headers for o in flooded if o.status == 429)
    assert all(o.status == 200 for o in calm_during)
    assert p50_during <= 2 * p50_alone
