"""Slow and heavy clients against a real server on loopback: one address cannot take every descriptor,
a head or body that never completes is timed out, and bodies in flight share one byte budget.

Every loop here is bounded in count and time and stops by itself; traffic goes to 127.0.0.1/127.0.0.2.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import start_server

pytestmark = pytest.mark.slow

FLOOD = 600  # connections from one address: more than the server may hold descriptors (512)
NOFILE = 512
PER_CLIENT = (NOFILE - 128) // 2  # service.http.connections.connection_caps(512)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _outcomes(socks: list[socket.socket], deadline_s: float) -> dict[str, int]:
    """Read each socket until the server answers or closes it; what each got ('503', '408', 'reset', ...)."""
    pending = {s.fileno(): s for s in socks}
    got: dict[str, int] = {}
    end = time.monotonic() + deadline_s
    while pending and time.monotonic() < end:
        ready, _, _ = select.select(list(pending.values()), [], [], 1.0)
        for s in ready:
            try:
                data = s.recv(4096)
                what = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
            except ConnectionResetError:
                what = "reset"
            got[what] = got.get(what, 0) + 1
            del pending[s.fileno()]
            s.close()
    got["still_open"] = len(pending)
    for s in pending.values():
        s.close()
    return got


def test_one_address_cannot_take_every_descriptor(
    model_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < FLOOD + 200:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pytest.skip(f"this test process may open only {soft} files, it needs {FLOOD + 200}")
    srv = start_server(model_repo, tmp_path, "--header-timeout-s", "20", nofile=NOFILE)
    port = int(srv.url.rsplit(":", 1)[1])
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):  # a partial request head, never completed
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n")
            flood.append(s)
        # while the flood holds its share, another address is served and readiness stays 200
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            held = _metric(srv.url, "http_open_connections")
            for _ in range(5):
                assert httpx.get(f"{srv.url}/health/ready", timeout=30).status_code == 200
                r = c.post("/classify", content=photos["coffee.jpg"], headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, r.text
        assert held >= PER_CLIENT, f"the flood held only {held} connections: the test proved nothing"
        got = _outcomes(flood, deadline_s=60)  # the header timeout (20 s) closes the held ones with 408
        flood = []
        assert got["still_open"] == 0, got
        assert got.get("408", 0) == PER_CLIENT, got
        assert got.get("503", 0) + got.get("reset", 0) + got.get("closed", 0) == FLOOD - PER_CLIENT, got
        assert _metric(srv.url, 'http_refused_total{reason="client_connections"}') == FLOOD - PER_CLIENT
        assert _metric(srv.url, 'http_refused_total{reason="header_timeout"}') == PER_CLIENT
    finally:
        for s in flood:
            s.close()
        srv.stop()


def _post_head(port: int, length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
              .encode())
    return s


def _answer(s: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return data


def test_a_stalled_body_is_timed_out_and_bodies_share_a_budget(
    model_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    srv = start_server(model_repo, tmp_path, "--body-timeout-s", "1", "--body-min-rate", "1000",
                       "--max-body-bytes-in-flight", "3000000", "--max-upload-bytes", "2000000")
    port = int(srv.url.rsplit(":", 1)[1])
    try:
        stalled = _post_head(port, 100_000)
        stalled.sendall(b"x" * 100)  # then nothing: 100 bytes in, 1000 bytes/s owed after a 1 s grace
        answer = _answer(stalled)
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:300]
        assert b"connection: close" in answer.lower()

        held = [_post_head(port, 1_400_000) for _ in range(2)]  # 2.8 MB of the 3 MB budget
        for s in held:
            s.sendall(b"\0" * 1_000_000)
        deadline = time.monotonic() + 30  # both bodies reach the server (their bytes are reserved on arrival)
        while _metric(srv.url, 'http_refused_total{reason="body_budget"}') == 0 and time.monotonic() < deadline:
            r = httpx.post(f"{srv.url}/classify", content=b"\0" * 1_400_000, timeout=30,
                           headers={"Content-Type": "image/jpeg"})
            if r.status_code == 503:
                break
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
        assert r.headers["Retry-After"] == "1"
        for s in held:
            s.sendall(b"\0" * 400_000)
            assert _answer(s).startswith(b"HTTP/1.1 400")  # zeros are no image: a client error, as it should be
        r = httpx.post(f"{srv.url}/classify", content=photos["coffee.jpg"], timeout=30,
                       headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{srv.url}/health/ready", timeout=10).status_code == 200
    finally:
        srv.stop()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_returns_near_its_baseline_after_a_burst_of_large_uploads(model_repo: Path, tmp_path: Path) -> None:
    srv = start_server(model_repo, tmp_path)
    port = int(srv.url.rsplit(":", 1)[1])
    size, n = 19 * 1024 * 1024, 30
    try:
        baseline = _rss_mib(srv.proc.pid)
        block = os.urandom(1024 * 1024)
        socks = [_post_head(port, size) for _ in range(n)]
        for s in socks:  # each body one byte short: all 30 held at once (570 MiB, under the 1 GiB budget)
            for _ in range(18):
                s.sendall(block)
            s.sendall(block[:-1])
        deadline = time.monotonic() + 60
        while _rss_mib(srv.proc.pid) < baseline + 0.8 * n * 19 and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the server's memory while it reads the bodies
        peak = _rss_mib(srv.proc.pid)
        assert peak >= baseline + 0.8 * n * 19, (baseline, peak)
        for s in socks:
            s.sendall(b"!")
        assert all(_answer(s).startswith(b"HTTP/1.1 400") for s in socks)
        deadline = time.monotonic() + 60
        while _rss_mib(srv.proc.pid) > baseline + 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = _rss_mib(srv.proc.pid)
        assert after <= baseline + 100, f"VmRSS {baseline:.0f} -> {peak:.0f} -> {after:.0f} MiB"
    finally:
        srv.stop()
