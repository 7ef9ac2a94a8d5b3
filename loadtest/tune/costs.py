"""The engine's batch costs, measured before any server starts: what prunes the search.

For every (model variant, runtime) that can serve the model here, the service's own runtime code
(``loadtest.engine``, the same registry and options) times one batch of each size in ``SIZES`` (up to
the model's ``max_batch_size``), and the service's own decode + preprocess times one image. A few
seconds per pair; the tuner then tries only what these numbers say can win.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (1, 2, 4, 8, 16, 32)
SECONDS_PER_SIZE = 1.5  # repeats of one size stop after about this long (at least MIN_REPEATS)
MIN_REPEATS = 3


@dataclass(frozen=True)
class Costs:
    """One (variant, runtime) pair's measured costs on this machine, all cores given to the runtime."""

    model: str
    runtime: str
    pre_ms: float  # decode + preprocess of one image, one thread
    batch_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median wall ms of one batch
    load_s: float = 0.0

    def per_image_ms(self, b: int) -> float:
        return self.batch_ms[b] / b

    def predicted_rps(self, b: int, cores: int) -> float:
        """A rough ceiling for ordering candidates: every image's decode and its share of a batch of ``b``
        (which takes all cores) paid out of ``cores`` cores. Measurement decides; this only ranks."""
        cpu_ms = self.pre_ms + cores * self.per_image_ms(b)
        return 1000.0 * cores / cpu_ms

    def fitting_batch(self, target_ms: float) -> int | None:
        """The largest measured size whose worst case fits the target: a request decoded (``pre_ms``), then
        waiting for the batch in progress and running in the next one (2 batches), None if even 1 does not."""
        fits = [b for b, ms in self.batch_ms.items() if self.pre_ms + 2 * ms <= target_ms]
        return max(fits) if fits else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"batch_ms": {str(b): ms for b, ms in self.batch_ms.items()}}


def _median_ms(fn: Callable[[], object], budget_s: float) -> float:
    fn()  # this size's first run (shape set-up) is not a batch the service runs twice
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < MIN_REPEATS or (time.perf_counter() < t_end and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def measure(repo: Path, model: str, runtime: str, image: bytes, max_batch: int,
            say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Costs:
    """Load ``repo/model`` with ``runtime`` the way the service does and time its batches."""
    from loadtest.engine import load_engine, preprocess_ms

    t0 = time.perf_counter()
    engine = load_engine(repo, model, runtime)
    load_s = time.perf_counter() - t0
    try:
        pre = preprocess_ms(engine, image, repeats=20)
        x = engine.prepare(image)
        batch_ms: dict[int, float] = {}
        for b in (s for s in SIZES if s <= max_batch):
            batch_ms[b] = _median_ms(partial(engine.runtime.infer, np.repeat(x[None], b, axis=0)), SECONDS_PER_SIZE)
            say(f"  {model} on {runtime}: batch {b}: {batch_ms[b]:.1f} ms ({1000 * b / batch_ms[b]:.0f} img/s)")
    finally:
        engine.close()
    return Costs(model, runtime, pre, batch_ms, load_s)
