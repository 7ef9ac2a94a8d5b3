"""Per-model inference statistics as Triton's ``ModelStatistics`` reports them, kept by the engine.

The engine counts what it ran, so with ``--processes N`` the figures are the whole service's, whichever
front end took the request (a front end's own request metrics are in ``/metrics``). A request counts
once admitted: a success when its answer is ready, a failure when it ends in an error after admission
(deadline passed, the runtime failed, an image that could not be decoded). A result answered from a
front end's cache never reaches the engine and is not counted here.
"""

from __future__ import annotations

import time

import msgspec


class ModelStat(msgspec.Struct, frozen=True):
    """One model version's counts and cumulative durations (nanoseconds, admission to answer)."""

    name: str
    version: str
    success_count: int
    success_ns: int
    fail_count: int
    fail_ns: int
    #: milliseconds since the epoch of the last request's end (0: none yet)
    last_inference_ms: int


class Statistics:
    def __init__(self) -> None:
        self._by_model: dict[tuple[str, str], list[int]] = {}

    def record(self, name: str, version: int, ok: bool, seconds: float) -> None:
        s = self._by_model.setdefault((name, str(version)), [0, 0, 0, 0, 0])
        i = 0 if ok else 2
        s[i] += 1
        s[i + 1] += int(seconds * 1e9)
        s[4] = int(time.time() * 1000)

    def snapshot(self) -> list[ModelStat]:
        return [ModelStat(name, version, *counts) for (name, version), counts in sorted(self._by_model.items())]
