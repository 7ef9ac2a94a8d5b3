"""gpu_* metrics through NVML, with a fake ``pynvml`` module: no GPU or driver needed."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics


class NVMLError(Exception):
    pass


class NVMLError_GpuIsLost(NVMLError):  # pynvml's own naming
    pass


@dataclass
class Util:
    gpu: int
    memory: int = 0


@dataclass
class Mem:
    used: int
    total: int
    free: int = 0


GPUS = [(37, 3 * 2**30, 80 * 2**30), (91, 70 * 2**30, 80 * 2**30)]


class FakeNVML(types.ModuleType):
    """What the service calls of ``pynvml``; ``lost`` holds the indexes whose reads raise, as a lost GPU's do."""

    NVMLError = NVMLError

    def __init__(self, count: int = len(GPUS), init_error: Exception | None = None) -> None:
        super().__init__("pynvml")
        self.count = count
        self.init_error = init_error
        self.lost: set[int] = set()

    def nvmlInit(self) -> None:  # pynvml's names
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i in self.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Util:
        return Util(GPUS[h][0])

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Mem:
        return Mem(GPUS[h][1], GPUS[h][2])


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def gpu(name: str, i: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, (("gpu", str(i)),)


def test_two_gpus_are_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    m = Metrics()
    body, content_type = m.render(None)
    assert content_type.startswith("text/plain")
    assert 'gpu_utilization_ratio{gpu="0"} 0.37' in body.decode()
    got = samples(body)
    for i, (util, used, total) in enumerate(GPUS):
        assert got[gpu("gpu_utilization_ratio", i)] == pytest.approx(util / 100)
        assert got[gpu("gpu_memory_used_bytes", i)] == used
        assert got[gpu("gpu_memory_total_bytes", i)] == total
    assert samples(generate_latest(m.registry)) == got  # the registry the route renders today: same samples


def test_openmetrics_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b'gpu_utilization_ratio{gpu="1"} 0.91' in body


def test_no_nvml_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(init_error=NVMLError("NVML Shared Library Not Found")))
    m = Metrics()
    assert m.gpu is None
    m.request_done("resnet50", "1", "200", 0.01, known=True)
    body, _ = m.render(None)
    assert b"gpu_" not in body
    assert b'inference_requests_total{model="resnet50",status="200",version="1"} 1.0' in body


def test_zero_gpus_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(count=0))
    m = Metrics()
    assert m.gpu is None
    assert b"gpu_" not in m.render(None)[0]


def test_nvml_error_during_a_scrape_drops_that_gpu_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    m = Metrics()
    m.request_done("resnet50", "1", "200", 0.01, known=True)
    nvml.lost.add(1)
    with caplog.at_level(logging.DEBUG, logger="service.metrics"):
        for _ in range(3):
            got = samples(m.render(None)[0])
            assert got[gpu("gpu_utilization_ratio", 0)] == pytest.approx(0.37)
            assert gpu("gpu_utilization_ratio", 1) not in got
            assert gpu("gpu_memory_used_bytes", 1) not in got
            assert got["inference_requests_total", (("model", "resnet50"), ("status", "200"), ("version", "1"))] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per lost GPU, not one per scrape"
    assert "GPU 1" in warnings[0].getMessage() and "NVMLError_GpuIsLost" in warnings[0].getMessage()

    nvml.lost.clear()  # back (e.g. after a reset): samples return
    assert samples(m.render(None)[0])[gpu("gpu_utilization_ratio", 1)] == pytest.approx(0.91)


def test_every_gpu_lost_still_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    m = Metrics()
    nvml.lost.update({0, 1})
    body, _ = m.render(None)
    assert b"gpu_utilization_ratio{" not in body
    assert b"# TYPE inference_requests_total counter" in body
    assert b"gpu_utilization_ratio{" not in generate_latest(m.registry)
