"""``--processes N``: workers share the port, metrics merge across them, SIGTERM stops them all."""

from __future__ import annotations

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
        # a worker joins the port only once its models are loaded: the first ready one already serves
        deadline = time.monotonic() + 60
        while srv.logs().count("startup complete: ready") < 2 and time.monotonic() < deadline:
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
    assert logs.count("startup complete: ready") == 2, logs
    assert "worker 0 started" in logs and "worker 1 started" in logs
    assert rc == 0
