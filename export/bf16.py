"""The BF16 gate: may OpenVINO run this FP32 model in BF16?

On CPUs with AVX512_BF16 or AMX, OpenVINO runs FP32 models in BF16 unless told otherwise. The gate
compiles the model with ``INFERENCE_PRECISION_HINT: bf16`` and compares it with FP32 ONNX Runtime:
top-1 agreement on the check set >= 99 % and the same top-1 on every real photo. The verdict is
recorded in the model's config; a model that fails is pinned to FP32 there
(``openvino.inference_precision: f32``, which the service hands to OpenVINO). It never fails the export.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from export import openvino
from export.errors import ExportError
from export.parity import Reference, Runner

if TYPE_CHECKING:
    from export.eval_gate import EvalGate

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
PASSED = "passed"
FAILED = "failed"
NOT_ENFORCED = "not enforced: random weights"
NO_BF16 = "skipped: no BF16 on the exporting CPU"
DISABLED = "skipped: --no-bf16-gate"
NO_OPENVINO = f"skipped: openvino not installed ({openvino.INSTALL_HINT})"


@dataclass(frozen=True)
class Bf16Result:
    gate: str  # passed | failed | not enforced: random weights | skipped: <why>
    agreement: float | None = None
    photos_same: bool | None = None
    evaluation: dict[str, str] = field(default_factory=dict)  # the labelled-set gate's parameters (--eval-dir)
    #: the compiled BF16 model the gate ran, reused for the check set's score (never a config parameter)
    runner: Runner | None = field(default=None, compare=False, repr=False)

    @property
    def pinned(self) -> bool:
        return self.gate == FAILED

    def params(self) -> dict[str, str]:
        """The config parameters recording this result (and pinning FP32 when it failed)."""
        params = {"export.bf16_gate": self.gate}
        if self.agreement is not None:
            params["export.bf16_agreement"] = f"{self.agreement:.4f}"
        if self.photos_same is not None:
            params["export.bf16_photos_top1_same"] = str(self.photos_same).lower()
        params.update(self.evaluation)
        if self.pinned:
            params[openvino.PRECISION_PARAM] = "f32"
        return params


def skip_reason(enabled: bool | None) -> str | None:
    """Why the gate does not run in this export (None: it runs). ``enabled`` None means "if possible"."""
    if enabled is False:
        return DISABLED
    if not openvino.available():
        if enabled:
            raise ExportError(f"--bf16-gate needs OpenVINO, which is not installed here: {openvino.INSTALL_HINT} "
                              "(or pass --no-bf16-gate)")
        return NO_OPENVINO
    if not openvino.bf16_capable():
        return NO_BF16
    return None


def verdict(agreement: float, photos_same: bool, random_weights: bool) -> str:
    if random_weights:  # predictions are meaningless, and so is their agreement: record, never pin
        return NOT_ENFORCED
    return PASSED if agreement >= MIN_AGREEMENT and photos_same else FAILED


def bf16_gate(model: Path, name: str, ref: Reference, random_weights: bool,
              evaluation: EvalGate | None = None) -> Bf16Result:
    """Run ``model`` (.onnx or .xml) in OpenVINO BF16 and compare it with FP32 ONNX Runtime; with
    ``evaluation`` (``--eval-dir``), the verdict is its top-1 drop on the labelled set instead."""
    t0 = time.perf_counter()
    runner = openvino.ov_runner(model, "bf16")
    got = ref.score(runner)  # the gate's measure (modelrepo.checkset): near-ties with no right answer do not count
    agreement = got.score
    photos_same = ref.photos_top1_equal(runner)
    gate, extra, how = verdict(agreement, photos_same, random_weights), {}, f"gate {100 * MIN_AGREEMENT:.1f}%"
    if evaluation is not None and not random_weights:
        judged = evaluation.judge(runner)
        print(judged.summary(f"OpenVINO BF16 ({name})"), flush=True)
        gate, extra, how = (PASSED if judged.passed else FAILED), judged.params("bf16"), "recorded; --eval-dir gates"
    res = Bf16Result(gate, agreement, photos_same, extra, runner)
    logger.info("BF16 gate for %s took %.1fs", name, time.perf_counter() - t0)
    print(f"OpenVINO BF16 vs FP32 ({name}): {got.summary()} ({how}), "
          f"real photos' top-1 {'same' if photos_same else 'DIFFERENT'} -> {res.gate}", flush=True)
    if res.pinned:
        print(f"BF16 gate failed: {name} is pinned to FP32 in its config ({openvino.PRECISION_PARAM}: f32), "
              "so OpenVINO will not run it in BF16", flush=True)
    return res
