"""Fault injection: a runtime wrapper that fails, stalls or returns garbage on command.

TESTING AND DRILLS ONLY; off by default. Enabled only by ``--fault-file PATH``
(``IMGSERVE_FAULT_FILE``): every runtime instance is wrapped, and before each batch the wrapper
checks that file (one ``stat``; it is re-read only when its mtime, size or inode changed) for one mode:

* ``ok`` (or no file): pass the runtime's output through;
* ``raise``: the batch raises (its requests get 500 ``inference_failed``);
* ``hang``: the batch sleeps until the file changes or 10 minutes pass (the batcher's ``--watchdog-s``
  retires the instance), then returns the real output to nobody;
* ``nan``: the first logit of the batch becomes NaN (the output check fails the batch);
* ``shape``: the last logit column is dropped (the output check fails the batch);
* ``once:<mode>``: that mode for one batch (per process), then ``ok`` until the file changes;
* ``slow_load:<seconds>``: every model load (start-up, reload, a restarted worker) first stalls that
  long, or until the file changes, as a big model on a slow disk would; batches run normally.

The service logs a WARNING for every model it wraps. Warm-up runs the real runtime, unwrapped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.runtimes.base import LoadSpec, Runtime

logger = logging.getLogger(__name__)

MODES = ("ok", "raise", "hang", "nan", "shape")
#: the longest a ``hang`` stalls a batch
HANG_MAX_S = 600.0
_POLL_S = 0.05


class FaultSwitch:
    """The mode in a fault file, re-read only when the file changes; shared by every wrapper of a path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._mode = "ok"
        self._once = False
        self._load_delay_s = 0.0

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> tuple[int, int, int] | None:
        key = self._stat_key()
        if key != self._key:
            self._key = key
            text = ""
            if key is not None:
                try:
                    text = self.path.read_text().strip().lower()
                except OSError:
                    text = ""
            self._load_delay_s = 0.0
            if text.startswith("slow_load:"):
                try:
                    self._load_delay_s = max(0.0, float(text.partition(":")[2]))
                except ValueError:
                    logger.warning("fault file %s: %r needs seconds, e.g. slow_load:5; ignored", self.path, text)
                text = "ok"
            once, _, mode = text.rpartition(":") if text.startswith("once:") else ("", "", text or "ok")
            if mode not in MODES:
                logger.warning("fault file %s: unknown mode %r (use %s, or once:<mode>); treated as ok",
                               self.path, text, ", ".join(MODES))
                mode = "ok"
            self._mode, self._once = mode, bool(once)
            logger.warning("fault injection: mode %s%s", "once:" if once else "", mode)
        return key

    def take(self) -> str:
        """The mode for the next batch (a ``once:`` mode is handed out one time)."""
        with self._lock:
            self._refresh()
            mode = self._mode
            if self._once:
                self._mode, self._once = "ok", False
            return mode

    def load_delay_s(self) -> float:
        """How long a model load stalls first (``slow_load:<seconds>``; 0 otherwise)."""
        with self._lock:
            self._refresh()
            return self._load_delay_s

    def changed_since(self, key: tuple[int, int, int] | None) -> bool:
        return self._stat_key() != key

    def key(self) -> tuple[int, int, int] | None:
        with self._lock:
            return self._key


_switches: dict[Path, FaultSwitch] = {}
_switches_lock = threading.Lock()


def switch_for(path: Path) -> FaultSwitch:
    with _switches_lock:
        return _switches.setdefault(Path(path), FaultSwitch(Path(path)))


class FaultyRuntime:
    """A loaded runtime whose outputs follow the fault file's mode; everything else is the runtime's own."""

    def __init__(self, inner: Runtime, switch: FaultSwitch) -> None:
        self.inner = inner
        self.switch = switch
        self.name, self.label = inner.name, inner.label
        self.device_kind, self.precision = inner.device_kind, inner.precision

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.inner, attr)  # AttributeError when the runtime lacks it (e.g. infer_tensor)
        if attr == "infer_tensor":
            return lambda batch: self._apply(value, batch)
        return value

    def load(self, spec: LoadSpec) -> None:
        self.inner.load(spec)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._apply(self.inner.infer, batch)
        return out

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        self.inner.warmup(batch_sizes, input_shape)

    def close(self) -> None:
        self.inner.close()

    def _apply(self, infer: Any, batch: Any) -> Any:
        """Run ``infer`` on the batch with the current fault: numpy or torch outputs alike."""
        mode = self.switch.take()
        if mode == "raise":
            raise RuntimeError(f"injected fault (fault file {self.switch.path}: raise)")
        if mode == "hang":
            key, end = self.switch.key(), time.monotonic() + HANG_MAX_S
            logger.warning("fault injection: hanging a batch of %d until %s changes", len(batch), self.switch.path)
            while time.monotonic() < end and not self.switch.changed_since(key):
                time.sleep(_POLL_S)
        out = infer(batch)
        if mode == "nan":
            out = out.clone() if hasattr(out, "clone") else out.copy()
            out[0, 0] = float("nan")
        elif mode == "shape":
            out = out[:, :-1]
        return out


def stall_load(path: Path, what: str) -> None:
    """Before loading ``what`` (in a loader thread): stall as long as the fault file's ``slow_load:<seconds>``
    says, or until the file changes, whichever comes first."""
    switch = switch_for(path)
    delay = switch.load_delay_s()
    if delay > 0:
        logger.warning("fault injection: stalling the load of %s for %.1f s (slow_load)", what, delay)
        key, end = switch.key(), time.monotonic() + delay
        while time.monotonic() < end and not switch.changed_since(key):
            time.sleep(_POLL_S)


def with_faults(runtimes: list[Runtime], path: Path) -> list[Runtime]:
    """Wrap each loaded runtime so its outputs follow the fault file at ``path``."""
    switch = switch_for(path)
    return [FaultyRuntime(rt, switch) for rt in runtimes]
