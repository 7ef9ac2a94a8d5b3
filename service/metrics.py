"""Prometheus collectors (names fixed by DESIGN.md §4), on a registry per app."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_requests", "Classification requests by outcome", ["model", "version", "status"], registry=r
        )
        self.images = Counter("inference_images", "Images classified", ["model", "version"], registry=r)

        def latency(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=_LATENCY_BUCKETS, registry=r)

        self.request_duration = latency("inference_request_duration_seconds", "End-to-end request time")
        self.queue_duration = latency("inference_queue_duration_seconds", "Time an image waited for its batch")
        self.preprocess_duration = latency(
            "inference_preprocess_duration_seconds", "Decode + preprocess time per request"
        )
        self.compute_duration = latency("inference_compute_duration_seconds", "Runtime time per batch")
        self.batch_size = Histogram(
            "inference_batch_size", "Images per executed batch", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("inference_queue_depth", "Images waiting in the queue", ["model"], registry=r)
        self.inflight = Gauge("inference_inflight_requests", "Requests being served", registry=r)
        self.model_ready = Gauge(
            "inference_model_ready", "1 when the model version is loaded and warmed up",
            ["model", "version", "runtime"], registry=r,
        )
        self.cache = Counter(
            "inference_cache_requests", "Result cache lookups", ["model", "result"], registry=r
        )
        self.shed = Counter(
            "inference_rejected_requests", "Requests refused with 503 (queue full, not ready, deadline)",
            ["model", "reason"], registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        gpu = _GpuCollector.create()
        if gpu is not None:
            r.register(gpu)


    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: labels() costs a lock and a dict build per call on the
        hot path. Callers keep label values bounded (unknown model names are reported as ``_unknown``)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c


    def request_done(
        self, model: str, version: str, status: str, seconds: float, known: bool, code: str = ""
    ) -> None:
        """One finished request. Names and versions that no model has are counted as ``_unknown`` /
        ``-``: request input must not mint unbounded label values (time series)."""
        if not known:
            model, version = "_unknown", "-"
        self.child(self.requests, model, version, status).inc()
        self.child(self.request_duration, model).observe(seconds)
        if status == "503":
            self.child(self.shed, model, code or "unavailable").inc()


class _GpuCollector:
    """gpu_utilization_ratio / gpu_memory_*_bytes through NVML, only where a GPU is present."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.count = nvml.nvmlDeviceGetCount()

    @classmethod
    def create(cls) -> _GpuCollector | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            return cls(pynvml)
        except Exception:  # noqa: BLE001 - no NVML, no GPU: no GPU metrics
            return None

    def collect(self) -> Any:
        util = GaugeMetricFamily("gpu_utilization_ratio", "GPU utilisation (0..1)", labels=["gpu"])
        used = GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        for i in range(self.count):
            h = self.nvml.nvmlDeviceGetHandleByIndex(i)
            u = self.nvml.nvmlDeviceGetUtilizationRates(h)
            m = self.nvml.nvmlDeviceGetMemoryInfo(h)
            util.add_metric([str(i)], u.gpu / 100.0)
            used.add_metric([str(i)], float(m.used))
            total.add_metric([str(i)], float(m.total))
        yield util
        yield used
        yield total
