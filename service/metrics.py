"""Prometheus collectors (names fixed by docs/reference/metrics.md), on a registry per app."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

#: prometheus_client's own switch (read by the library itself when ``prometheus_client.values`` is first
#: imported, so it cannot be a Settings field): a directory shared by the worker processes of
#: ``--processes N``. Set, each process writes its samples to mmap files there and /metrics merges them.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """The parent calls this when worker ``pid`` has exited: its live-mode gauges (queue depth, in-flight
    requests, model readiness) stop counting. Its counters and histograms stay in the merge, so totals
    never go backwards when a worker is replaced. A no-op outside multi-process mode."""
    path = multiproc_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: actual - predicted completion: negative when a request finished before admission said it would
_ERROR_BUCKETS = (-5.0, -2.0, -1.0, -0.75, -0.5, -0.4, -0.3, -0.2, -0.15, -0.1, -0.075, -0.05, -0.025, -0.01, 0.0,
                  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)


def _latency(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
    return Histogram(name, doc, ["model"], buckets=_LATENCY_BUCKETS, registry=registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_requests", "Classification requests by outcome", ["model", "version", "status"], registry=r
        )
        self.images = Counter("inference_images", "Images classified", ["model", "version"], registry=r)
        latency = partial(_latency, r)
        self.request_duration = latency("inference_request_duration_seconds", "End-to-end request time")
        self.queue_duration = latency("inference_queue_duration_seconds", "Time an image waited for its batch")
        self.preprocess_duration = latency(
            "inference_preprocess_duration_seconds", "Decode + preprocess time per request"
        )
        self.compute_duration = latency("inference_compute_duration_seconds", "Runtime time per batch")
        self.estimate_error = Histogram(
            "inference_admission_estimate_error_seconds",
            "Completion time of an admitted request minus the one admission predicted (positive: later than "
            "promised; a 504's is taken when its deadline passed)", ["model"], buckets=_ERROR_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size", "Images per executed batch", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        # multiprocess_mode only matters under PROMETHEUS_MULTIPROC_DIR (how the workers' values merge).
        # Queue depth and in-flight requests add up across workers ("livesum": an exited worker's last
        # value is dropped by mark_process_dead, not summed forever).
        self.queue_depth = Gauge(
            "inference_queue_depth", "Images waiting in the queue", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "inference_inflight_requests", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        # Readiness is "livemin": 1 only when every live worker that has loaded this version still serves it
        # (SO_REUSEPORT spreads requests over all workers, so one worker's 0 means some requests miss).
        # Not "max": non-live files are never removed, so a crashed worker's 1 would stay forever. Not
        # "liveall": it adds a pid label, one series per worker, and the documented label set would change.
        self.model_ready = Gauge(
            "inference_model_ready", "1 when the model version is loaded and warmed up",
            ["model", "version", "runtime"], registry=r, multiprocess_mode="livemin",
        )
        self.cache = Counter(
            "inference_cache_requests", "Result cache lookups", ["model", "result"], registry=r
        )
        self.shed = Counter(
            "inference_rejected_requests", "Requests refused with 503 (queue full, not ready, deadline)",
            ["model", "reason"], registry=r,
        )
        self._declare_front_end(r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.multiproc_dir = multiproc_dir()
        self._check_shared()
        # GPUs are per host, not per worker: collected live by whichever process renders, never merged.
        self.gpu = _GpuCollector.create()
        if self.gpu is not None:
            r.register(self.gpu)


    def _declare_front_end(self, r: CollectorRegistry) -> None:
        # the connection and body guards (service.http.connections, service.http.body_guard)
        self.open_connections = Gauge(
            "http_open_connections", "Client connections open", registry=r, multiprocess_mode="livesum"
        )
        self.refused = Counter(
            "http_refused", "Connections or requests refused or closed by the connection and body guards "
            "(total_connections, client_connections, header_timeout, body_too_slow, body_budget)",
            ["reason"], registry=r,
        )
        self.protocol_requests = Counter(
            "inference_protocol_requests", "Requests by protocol (http, grpc) and outcome (the HTTP status, or "
            "gRPC's equivalent)", ["protocol", "status"], registry=r,
        )

    def _check_shared(self) -> None:
        """In multi-process mode the label-less gauges are already mmap files named by this pid; none means
        prometheus_client was imported before the variable was set (it chooses at import): this process
        counts in memory only and its samples are missing from every process's /metrics."""
        if self.multiproc_dir is not None and not any(Path(self.multiproc_dir).glob(f"*_{os.getpid()}.db")):
            logger.error(
                "%s is set but prometheus_client was imported before it was: this process's metrics are not "
                "shared (set it before the worker process starts, i.e. spawn workers, do not fork)", MULTIPROC_ENV,
            )

    def render(self, accept_header: str | None = None) -> tuple[bytes, str]:
        """The /metrics body and its content type (OpenMetrics when the scraper asks for it). Under
        PROMETHEUS_MULTIPROC_DIR the samples of every worker, merged from the shared directory, on a fresh
        registry (this process's own registry would show its samples alone), plus this host's GPUs once."""
        encoder, content_type = choose_encoder(accept_header or "")
        if self.multiproc_dir is None:
            return encoder(self.registry), content_type
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.multiproc_dir)
        if self.gpu is not None:
            registry.register(self.gpu)
        return encoder(registry), content_type

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: labels() costs a lock and a dict build per call on the
        hot path. Callers keep label values bounded (unknown model names are reported as ``_unknown``)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c


    def request_done(
        self, model: str, version: str, status: str, seconds: float, known: bool, code: str = "",
        protocol: str = "http",
    ) -> None:
        """One finished request (``status``: the HTTP status, or its equivalent for gRPC). Names and
        versions that no model has are counted as ``_unknown`` / ``-``: request input must not mint
        unbounded label values (time series)."""
        if not known:
            model, version = "_unknown", "-"
        self.child(self.protocol_requests, protocol, status).inc()
        self.child(self.requests, model, version, status).inc()
        self.child(self.request_duration, model).observe(seconds)
        if status == "503":
            self.child(self.shed, model, code or "unavailable").inc()


class _GpuCollector:
    """gpu_utilization_ratio / gpu_memory_*_bytes through NVML (the ``nvidia-ml-py`` package, imported as
    ``pynvml``), only where a GPU is present. A GPU that NVML cannot read during a scrape (lost, reset,
    driver error) loses its samples for that scrape; /metrics itself never fails for it."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml = nvml
        self.count = count
        self._warned: set[int] = set()

    @classmethod
    def create(cls) -> _GpuCollector | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as e:  # noqa: BLE001 - no NVML library, no driver, no GPU: no GPU metrics
            logger.debug("no GPU metrics: %s", e)
            return None
        return cls(pynvml, count) if count > 0 else None

    def _read(self, i: int) -> tuple[float, float, float] | None:
        try:
            h = self.nvml.nvmlDeviceGetHandleByIndex(i)
            u = self.nvml.nvmlDeviceGetUtilizationRates(h)
            m = self.nvml.nvmlDeviceGetMemoryInfo(h)
            sample = (u.gpu / 100.0, float(m.used), float(m.total))
        except Exception as e:  # noqa: BLE001 - NVMLError and its subclasses, or whatever a broken driver raises
            if i not in self._warned:  # once per GPU, not once per scrape
                self._warned.add(i)
                logger.warning("GPU %d: NVML read failed, its gpu_* metrics are left out: %s: %s",
                               i, type(e).__name__, e)
            else:
                logger.debug("GPU %d: NVML read failed: %s", i, e)
            return None
        if i in self._warned:
            self._warned.discard(i)
            logger.info("GPU %d: NVML readable again", i)
        return sample

    def collect(self) -> Iterator[Metric]:
        util = GaugeMetricFamily("gpu_utilization_ratio", "GPU utilisation (0..1)", labels=["gpu"])
        used = GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        for i in range(self.count):
            sample = self._read(i)
            if sample is None:
                continue
            for family, value in zip((util, used, total), sample, strict=True):
                family.add_metric([str(i)], value)
        yield util
        yield used
        yield total
