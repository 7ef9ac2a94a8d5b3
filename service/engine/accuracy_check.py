"""The accuracy gate that travels with a model, re-run on the CPU (or GPU) that will serve it.

An export in reduced precision writes a check set beside the version (``modelrepo.checkset``: a few
dozen preprocessed inputs and the FP32 model's logits) and records its gate in config.pbtxt. When a
version loads, and its runtime computes in reduced precision *here* (an INT8 or FP16 model file, or an
FP32 model that OpenVINO runs in BF16 by default on a BF16 CPU), the check set runs through the first
runtime instance and is scored against the FP32 logits. Below the gate the version is not served
silently:

- an FP32 model the runtime chose to run in BF16/FP16 is loaded again pinned to FP32 and served so
  (its FP32 sibling: the same file, computed exactly);
- an INT8/FP16 model file is refused (the load fails; ``/models``, ``/health/ready`` and the log carry
  the message), unless ``--accept-accuracy-loss`` serves it with a warning.

The messages say what was measured, the gate, where the model was exported against this CPU, and what
to do. A check set that is missing, truncated or does not fit the model is a ``RepositoryError`` naming
the file, like any other unservable model file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modelrepo.checkset import (
    PARAM_CHECK,
    PARAM_CPU,
    PARAM_MIN,
    PARAM_SCORE,
    Agreement,
    CheckSet,
    agreement,
    read_check,
)
from modelrepo.cpu import this_cpu
from modelrepo.errors import RepositoryError
from modelrepo.layout import ModelEntry
from service.engine.description import AccuracyInfo
from service.engine.routing import VARIANT_PARAM
from service.runtimes import LoadSpec, Runtime
from service.runtimes.faults import FaultyRuntime

logger = logging.getLogger("service.engine.manager")

#: the exporter records scores rounded to a few decimals: a score equal to the recorded one passes
GATE_TOLERANCE = 5e-4
#: model-name suffixes of the exporter's reduced-precision variants of ``NAME``
_VARIANT_SUFFIXES = ("_int8", "_fp16")
#: the config parameter that pins a runtime's precision (what the FP32 fallback tells an operator to set)
_PIN_PARAM = {"openvino": "openvino.inference_precision", "pytorch": "pytorch.precision"}
#: (runtime instances) -> the same version loaded again from ``spec`` (FP32 pinned)
Reload = Callable[[LoadSpec], list[Runtime]]


@dataclass(frozen=True)
class Gate:
    """The gate config.pbtxt records beside the check set."""

    file: Path
    minimum: float  # PARAM_MIN
    exported: float | None  # PARAM_SCORE: the candidate's own score at export (None: not measured there)
    cpu: str  # PARAM_CPU: where it was exported

    @property
    def threshold(self) -> float:
        return self.minimum if self.exported is None else min(self.minimum, self.exported)

    def words(self) -> str:
        at_export = "" if self.exported is None else f"; it scored {_pct(self.exported)} at export"
        return f"{_pct(self.threshold)} ({PARAM_MIN} {_pct(self.minimum)}{at_export})"


@dataclass(frozen=True)
class AccuracyCheck:
    """What the check found for one version: ``/models`` shows it as ``accuracy_check``."""

    #: passed | accepted_loss | served_fp32 | not_needed | no_check_set
    status: str
    message: str
    precision: str = ""
    score: float | None = None
    gate: float | None = None
    images: int = 0
    seconds: float = 0.0
    exported_on: str = ""
    checked_on: str = ""

    def describe(self) -> AccuracyInfo:
        if self.score is None or self.gate is None:
            return AccuracyInfo(self.status, self.message)
        return AccuracyInfo(self.status, self.message, self.precision, round(self.score, 4), round(self.gate, 4),
                            self.images, round(self.seconds, 3), self.exported_on, self.checked_on)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fraction(entry: ModelEntry, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise RepositoryError(f"model {entry.name!r}: config parameter {key} is {raw!r}, expected a fraction "
                              "in [0, 1] (e.g. 0.98); fix it or re-export the model")
    return value


def read_gate(entry: ModelEntry, version: int) -> Gate | None:
    """The version's recorded gate, or None when its export wrote no check set (an older export)."""
    params = entry.params
    name = params.get(PARAM_CHECK, "")
    if not name:
        return None
    if Path(name).name != name or name in (".", ".."):
        raise RepositoryError(f"model {entry.name!r}: config parameter {PARAM_CHECK} is {name!r}: it names a "
                              "file in the version folder, without a path")
    file = entry.version_dir(version) / name
    if PARAM_MIN not in params:
        raise RepositoryError(f"model {entry.name!r}: config.pbtxt names the accuracy check set {file} but "
                              f"records no {PARAM_MIN}: re-export the model")
    if file.exists():
        entry.inside(file, f"model {entry.name!r} accuracy check set")
    exported = params.get(PARAM_SCORE)
    return Gate(file, _fraction(entry, PARAM_MIN, params[PARAM_MIN]),
                None if not exported else _fraction(entry, PARAM_SCORE, exported),
                params.get(PARAM_CPU) or "an unrecorded CPU")


def _unwrapped(runtime: Runtime) -> Runtime:
    """The runtime itself: injected faults (--fault-file) are for requests, not for the load-time check."""
    return runtime.inner if isinstance(runtime, FaultyRuntime) else runtime


def measure(runtime: Runtime, check: CheckSet, max_batch: int, file: Path) -> Agreement:
    """Run the check set through ``runtime`` in batches of at most ``max_batch``; score against FP32."""
    step = max(1, max_batch)
    rt = _unwrapped(runtime)
    got = np.concatenate([np.asarray(rt.infer(np.ascontiguousarray(check.inputs[i:i + step])), np.float32)
                          for i in range(0, len(check.inputs), step)])
    if got.shape != check.reference.shape:
        raise RepositoryError(f"accuracy check set {file}: the model answers its {len(check.inputs)} inputs "
                              f"with logits of shape {got.shape}, its reference logits are "
                              f"{check.reference.shape}: it belongs to another model; re-export")
    if not np.isfinite(got).all():
        raise RepositoryError(f"accuracy check set {file}: the model's {runtime.precision} logits on "
                              f"{runtime.label} hold NaN/Inf here: it cannot serve on this machine")
    return agreement(check.reference, got)


def fp32_sibling(entry: ModelEntry) -> str | None:
    """The FP32 model this reduced-precision model was exported from, when the repository has it."""
    base = entry.params.get(VARIANT_PARAM, "")
    if not base:
        base = next((entry.name[: -len(s)] for s in _VARIANT_SUFFIXES if entry.name.endswith(s)), "")
    if base and base != entry.name and (entry.path.parent / base / "config.pbtxt").is_file():
        return base
    return None


def _close(runtimes: list[Runtime]) -> None:
    for rt in runtimes:
        rt.close()


def _num_classes(entry: ModelEntry) -> int:
    dims = list(entry.config.output[0].dims) if entry.config.output else []
    return int(dims[-1]) if dims else 0


def check_accuracy(entry: ModelEntry, version: int, runtimes: list[Runtime], spec: LoadSpec, max_batch: int,
                   accept_loss: bool, reload: Reload) -> tuple[list[Runtime], AccuracyCheck]:
    """Re-run the version's check set when its runtime computes in reduced precision here.

    Returns the runtimes to serve (``runtimes``, or the version reloaded pinned to FP32) and what the
    check found; raises ``RepositoryError`` (the version is not served) for a bad check set, or a score
    below the gate that nothing else may serve. The runtimes passed in are closed when not returned.
    """
    runtime, where = runtimes[0], f"model {entry.name} v{version}"
    try:
        gate = read_gate(entry, version)
        if runtime.precision == "fp32" or gate is None:
            return runtimes, _unchecked(where, runtime, gate)
        t0 = time.perf_counter()
        check = read_check(gate.file, spec.input_shape, _num_classes(entry))
        got = measure(runtime, check, max_batch, gate.file)
    except BaseException:
        _close(runtimes)
        raise
    seconds = time.perf_counter() - t0
    passed = got.score + GATE_TOLERANCE >= gate.threshold
    found = AccuracyCheck("passed", "", runtime.precision, got.score, gate.threshold, got.images, seconds,
                          gate.cpu, this_cpu().describe())
    measured = f"its {runtime.precision} accuracy check on {runtime.label} measured {got.summary()}"
    logger.info("%s: %s; gate %s: %s; %d images in %.2f s (exported on %s, checked on %s)", where, measured,
                gate.words(), "passed" if passed else "BELOW THE GATE", got.images, seconds, gate.cpu,
                found.checked_on)
    if passed:
        return runtimes, replace(found, message=f"passed on this machine: {measured}, gate {gate.words()}")
    below = (f"{measured}, below its gate of {gate.words()}. It was exported and gated on {gate.cpu}; this is "
             f"{found.checked_on}{_saturation_hint(runtime.precision)}")
    if accept_loss:
        msg = f"served BELOW ITS ACCURACY GATE (--accept-accuracy-loss): {below}"
        logger.warning("%s: %s", where, msg)
        return runtimes, replace(found, status="accepted_loss", message=msg)
    if entry.params.get("export.precision", "fp32") == "fp32" and runtime.precision in ("bf16", "fp16"):
        _close(runtimes)  # the runtime's own choice of precision for an FP32 model: compute it in FP32
        runtimes = reload(replace(spec, precision="f32"))
        if runtimes[0].precision == "fp32":
            msg = (f"served in fp32 (exact, slower) instead of {runtime.precision}: {below}. To serve "
                   f"{runtime.precision} anyway pass --accept-accuracy-loss; to skip this check at every load, pin "
                   f"fp32 in its config ({_PIN_PARAM.get(runtime.name, 'its runtime precision parameter')}: f32)")
            logger.warning("%s: %s", where, msg)
            return runtimes, replace(found, status="served_fp32", message=msg)
    _close(runtimes)
    raise RepositoryError(f"model {entry.name!r} version {version} is refused here: {below}. What to do: "
                          f"{_what_to_do(entry, runtime.precision)}")


def _unchecked(where: str, runtime: Runtime, gate: Gate | None) -> AccuracyCheck:
    if runtime.precision == "fp32":
        if gate is not None and not gate.file.is_file():
            logger.warning("%s: its accuracy check set %s is missing (not needed here, where it computes in "
                           "fp32; a reduced-precision runtime would refuse it): copy the whole version folder",
                           where, gate.file)
        return AccuracyCheck("not_needed", f"computes in fp32 on {runtime.label}: nothing to check")
    msg = (f"no accuracy check set (an export older than check sets): its {runtime.precision} accuracy on "
           f"this machine is not checked; re-export it to have it checked at every load")
    logger.info("%s: %s", where, msg)
    return AccuracyCheck("no_check_set", msg, runtime.precision)


def _saturation_hint(precision: str) -> str:
    cpu = this_cpu()
    if precision == "int8" and cpu.flags and not cpu.int8_exact:
        return " (no VNNI: 8-bit products accumulate in saturating 16-bit sums here)"
    return ""


def _what_to_do(entry: ModelEntry, precision: str) -> str:
    sibling = fp32_sibling(entry)
    if entry.params.get("export.precision", "fp32") == "fp32":  # a runtime that cannot be pinned to FP32
        fp32 = f"serve it with a runtime that computes in fp32 here (its runtime ran it in {precision})"
    elif sibling:
        fp32 = f"serve the FP32 model {sibling!r} instead"
    else:
        fp32 = "serve its FP32 model instead (export it without --precision)"
    return (f"{fp32}; or re-export it on a machine of this class ({this_cpu().cpu_class}) so that its "
            f"calibration and gate hold here; or pass --accept-accuracy-loss (env "
            f"IMGSERVE_ACCEPT_ACCURACY_LOSS=true) to serve it with this loss")
