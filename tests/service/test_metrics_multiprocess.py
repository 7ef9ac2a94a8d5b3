"""--processes N: every worker's samples on whichever worker answers /metrics (PROMETHEUS_MULTIPROC_DIR).

prometheus_client chooses where values live (memory or mmap files in the shared directory) once, when
``prometheus_client.values`` is first imported. Each worker here is a fresh ``python -c`` with the variable
already in its environment, as the workers of ``--processes`` are. This test process imported
prometheus_client long before monkeypatch sets the variable, so its own Metrics count in memory: they are
left out of the merge (test_late_import_is_reported_and_left_out), and it only renders what the files hold.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import MULTIPROC_ENV, Metrics, mark_process_dead
from tests.service.test_metrics_gpu import FakeNVML

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import os, sys
from service.metrics import Metrics
depth, ready = int(sys.argv[1]), int(sys.argv[2])
m = Metrics()
m.request_done("resnet50", "1", "200", 0.02, known=True)
m.child(m.images, "resnet50", "1").inc(depth)
m.child(m.queue_depth, "resnet50").set(depth)
m.inflight.inc()
m.child(m.model_ready, "resnet50", "1", "onnxruntime-cpu").set(ready)
print(os.getpid())
"""

Key = tuple[str, tuple[tuple[str, str], ...]]


def worker(directory: Path, depth: int, ready: int) -> int:
    """A worker that counts one request and exits; its pid (the mmap files are named after it)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), MULTIPROC_ENV: str(directory)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(depth), str(ready)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return int(out.stdout.split()[-1])


def samples(body: bytes) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


REQUESTS: Key = ("inference_requests_total", (("model", "resnet50"), ("status", "200"), ("version", "1")))
IMAGES: Key = ("inference_images_total", (("model", "resnet50"), ("version", "1")))
COUNT: Key = ("inference_request_duration_seconds_count", (("model", "resnet50"),))
DEPTH: Key = ("inference_queue_depth", (("model", "resnet50"),))
INFLIGHT: Key = ("inference_inflight_requests", ())
READY: Key = ("inference_model_ready", (("model", "resnet50"), ("runtime", "onnxruntime-cpu"), ("version", "1")))


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    return tmp_path


def test_workers_merge(shared: Path) -> None:
    a = worker(shared, depth=3, ready=1)
    b = worker(shared, depth=4, ready=0)
    m = Metrics()
    body, content_type = m.render("*/*")
    assert content_type.startswith("text/plain")
    got = samples(body)
    assert got[REQUESTS] == 2
    assert got[IMAGES] == 7
    assert got[COUNT] == 2
    assert got[DEPTH] == 7  # livesum
    assert got[INFLIGHT] == 2  # livesum
    assert got[READY] == 0  # livemin: one live worker does not serve it
    assert list(got).count(READY) == 1, "no pid label: one series per model version"

    mark_process_dead(b)
    got = samples(m.render(None)[0])
    assert got[REQUESTS] == 2 and got[IMAGES] == 7, "an exited worker's counts stay: totals never go back"
    assert got[DEPTH] == 3 and got[INFLIGHT] == 1 and got[READY] == 1, "its gauges do not"

    mark_process_dead(a)
    got = samples(m.render(None)[0])
    assert got[REQUESTS] == 2
    assert DEPTH not in got and READY not in got


def test_openmetrics_merged(shared: Path) -> None:
    worker(shared, depth=1, ready=1)
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b'inference_requests_total{model="resnet50",status="200",version="1"} 1.0' in body


def test_gpus_once(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU gauges are read live by the rendering process, not written to the shared files."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(count=1))
    worker(shared, depth=1, ready=1)
    body, _ = Metrics().render(None)
    assert body.count(b'gpu_utilization_ratio{gpu="0"} 0.37') == 1
    assert samples(body)[REQUESTS] == 1


def test_late_import_is_reported_and_left_out(shared: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker(shared, depth=1, ready=1)
    with caplog.at_level(logging.ERROR, logger="service.metrics"):
        m = Metrics()
    assert any("imported before" in r.getMessage() for r in caplog.records)
    m.request_done("resnet50", "1", "200", 0.01, known=True)  # in memory: not in the shared files
    assert samples(m.render(None)[0])[REQUESTS] == 1


def test_single_process_ignores_dead_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    m = Metrics()
    m.request_done("resnet50", "1", "200", 0.01, known=True)
    mark_process_dead(12345)  # no directory: nothing to do
    assert samples(m.render(None)[0])[REQUESTS] == 1
