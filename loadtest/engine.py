"""The engine limit: the service's own decode + preprocess + runtime code, in process, no HTTP.

``pipelined_throughput`` runs what the service runs per image (``decode`` -> ``resize_crop`` ->
``Normalizer`` in a thread pool of ``workers`` threads) overlapped with ``np.stack`` + inference of
the previous batch on the calling thread, with the runtime built exactly as the service builds it
(``load_runtime`` through the same registry, same options). Its best images/s is the
ceiling the HTTP service is compared against.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrepo.image_preprocess import Normalizer, preprocess
from modelrepo.layout import scan_model
from modelrepo.preprocess import Preprocess
from service.config import Settings
from service.runtimes import LoadSpec, Runtime, load_runtime

MAX_PIXELS = Settings.model_fields["max_image_pixels"].default


@dataclass
class Engine:
    name: str
    runtime: Runtime
    preprocess: Preprocess
    normalizer: Normalizer
    input_shape: tuple[int, ...]

    def prepare(self, data: bytes) -> np.ndarray:
        """Exactly the service's per-image work (the same function /classify runs in its pool)."""
        return preprocess(data, self.preprocess, MAX_PIXELS, self.normalizer)

    def close(self) -> None:
        self.runtime.close()


def load_engine(repo: Path, name: str, runtime: str = "auto", precision: str | None = None,
                threads: int = 0) -> Engine:
    """Load the latest version of ``repo/name`` the way the service does (CPU, same registry and options)."""
    entry = scan_model(repo / name)
    dims = tuple(int(d) for d in entry.config.input[0].dims)
    spec = LoadSpec(entry.model_file(entry.latest_version()), entry.params, "cpu", threads, dims, precision)
    rt, _ = load_runtime(entry.platform, spec, runtime, "cpu")
    pp = Preprocess.from_params(entry.params, list(dims))
    return Engine(name, rt, pp, Normalizer(pp), dims)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def preprocess_ms(engine: Engine, data: bytes, repeats: int = 50) -> float:
    """Median decode + preprocess time of one image on one thread."""
    return median_ms(lambda: engine.prepare(data), repeats)


def batch1_ms(engine: Engine, data: bytes, seconds: float = 3.0) -> float:
    """Median batch-1 inference time (no decode), repeated for about ``seconds``."""
    x = engine.prepare(data)[None]
    one = median_ms(lambda: engine.runtime.infer(x), 3)
    repeats = max(5, min(500, int(seconds * 1000 / max(one, 0.1))))
    return median_ms(lambda: engine.runtime.infer(x), repeats)


def pipelined_throughput(engine: Engine, data: bytes, batch: int, seconds: float, workers: int) -> float:
    """Images/s of decode (``workers`` threads) overlapped with batched inference, for ``seconds``."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-preprocess") as pool:
        ahead: deque[Future[np.ndarray]] = deque()

        def top_up() -> None:
            # Two batches of decodes in flight: the next batch is ready when inference frees.
            while len(ahead) < 2 * batch:
                ahead.append(pool.submit(engine.prepare, data))

        top_up()
        engine.runtime.infer(np.stack([ahead.popleft().result() for _ in range(batch)]))  # warm this size
        top_up()
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            x = np.stack([ahead.popleft().result() for _ in range(batch)])
            top_up()
            engine.runtime.infer(x)
            done += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        elapsed = now - t0
        for f in ahead:
            f.cancel()
    return done / elapsed
