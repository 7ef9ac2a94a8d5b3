"""Warm-up before a version reports ready (``--warmup``, ``--warmup-batch-sizes``): which batch sizes.

A runtime's first run pays one-time costs (threads, memory, the first kernels): batch size 1 takes
them, cheaply. On a GPU every new input shape also picks its kernels (cuDNN, TensorRT profiles), and a
batch costs milliseconds, so each size is warmed. On a CPU a size's first run costs a roughly constant
few tens of milliseconds more than its next (OpenVINO, ResNet-50: +40 ms at sizes 8 to 32 on a Xeon with
AMX, about +10 % of the batch with AVX2), while warming it costs the whole batch: sizes 1..32 are 528
images, 16 s on this 2-core Xeon and over two minutes at a quarter of each core in FP32 with AVX2
(``python -m loadtest.restart``). That is the time a restarted engine answers 503; so a CPU warms size 1
and lets each other size's first real batch pay its few milliseconds once.
"""

from __future__ import annotations

import logging
import time

from service.runtimes import Runtime

logger = logging.getLogger(__name__)


def warmup_batch_sizes(mode: str, device_kind: str, max_batch_size: int) -> list[int]:
    """Batch sizes to run before ready: ``all`` -> 1..max; ``one`` -> [1]; ``auto``: all on a GPU, one on a CPU."""
    if mode == "all" or (mode == "auto" and device_kind == "gpu"):
        return list(range(1, max_batch_size + 1))
    return [1]


def warm_up(name: str, version: int, runtimes: list[Runtime], sizes: list[int], input_shape: tuple[int, ...],
            max_batch_size: int) -> float:
    """Run each of ``sizes`` once on every instance (blocking, before the batcher starts); seconds taken."""
    t0 = time.monotonic()
    for rt in runtimes:
        rt.warmup(sizes, input_shape)
    took = time.monotonic() - t0
    which = f"{sizes[0]}..{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
    rest = "" if len(sizes) >= max_batch_size else f" (sizes up to {max_batch_size}: on their first batch)"
    logger.info("warmed up %s v%d (%d instance%s) at batch size%s %s in %.2f s%s", name, version, len(runtimes),
                "s" if len(runtimes) > 1 else "", "s" if len(sizes) > 1 else "", which, took, rest)
    return took
