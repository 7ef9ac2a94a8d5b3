"""``--processes N``: front ends share the port and feed one engine, metrics merge, SIGTERM stops them all."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import start_server

pytestmark = pytest.mark.slow


def test_two_workers_share_the_port_and_merge_metrics(
    model_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    srv = start_server(model_repo, tmp_path, "--processes", "2")
    try:
        # a front end joins the port only once the engine has loaded the models: the first one already serves
        deadline = time.monotonic() + 60
        while srv.logs().count("Application startup complete.") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for _ in range(12):
                r = c.post("/classify", content=photos["coffee.jpg"], headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200
        # every fresh connection may land on either worker: each must report the merged total
        for _ in range(4):
            text = httpx.get(f"{srv.url}/metrics").text
            line = next(ln for ln in text.splitlines() if ln.startswith("inference_requests_total{"))
            assert line.endswith(" 12.0"), line
    finally:
        rc = srv.stop()
    logs = srv.logs()
    assert logs.count("startup complete: ready") == 1, logs  # one engine loaded the models, once
    assert "engine started" in logs and "front-end-0 started" in logs and "front-end-1 started" in logs
    assert logs.count("connected to the engine process") == 2, logs
    assert rc == 0


def _probe(url: str, seconds: float) -> list[str]:
    """New connections for ``seconds``: each must be refused or answered within a second (never left waiting)."""
    outcomes: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            # a fresh connection per probe: the kernel picks a listener for each new connection
            r = httpx.get(f"{url}/health/ready", timeout=httpx.Timeout(1.0))
            outcomes.append(str(r.status_code))
        except httpx.ConnectError:
            outcomes.append("refused")
        except httpx.TimeoutException as e:
            raise AssertionError(f"a connection waited over 1 s while the models loaded: {e!r}") from e
        time.sleep(0.05)  # pacing only: the assertion is on each probe's own outcome
    return outcomes


@pytest.mark.parametrize("processes", [1, 2])
def test_connections_are_refused_or_answered_while_models_load(
    model_repo: Path, tmp_path: Path, processes: int
) -> None:
    """Loading stalls 12 s (fault file): meanwhile every new connection is refused (no worker listens yet,
    --processes 2) or answered 503 at once (one process: it listens and reports loading), never queued."""
    faults = tmp_path / "faults"
    faults.write_text("slow_load:12")
    srv = start_server(model_repo, tmp_path, "--processes", str(processes), "--fault-file", str(faults),
                       wait_http=False)
    try:
        deadline = time.monotonic() + 60
        while "stalling the load" not in srv.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "stalling the load" in srv.logs(), srv.logs()
        outcomes = _probe(srv.url, 4.0)  # well inside the 12 s stall
        expected = {"refused"} if processes > 1 else {"503"}
        assert outcomes and set(outcomes) == expected, outcomes
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{srv.url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert httpx.get(f"{srv.url}/health/ready", timeout=5).status_code == 200, srv.logs()
    finally:
        srv.stop()


def test_sighup_reaches_every_worker_and_the_supervisor_survives(model_repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice:old-key-0123456789\n")
    srv = start_server(model_repo, tmp_path, "--processes", "2", "--api-keys-file", str(keys))
    try:
        deadline = time.monotonic() + 60
        while srv.logs().count("Application startup complete.") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while srv.logs().count("SIGHUP: reloading API keys") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.logs().count("SIGHUP: reloading API keys") == 2, srv.logs()
        assert srv.proc.poll() is None, "the supervisor died of SIGHUP"
        r = httpx.get(f"{srv.url}/models", headers={"X-API-Key": "old-key-0123456789"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        assert srv.stop() == 0
