"""The check set an export leaves beside a version, so that its gate travels to the serving CPU.

The service re-runs it at load wherever the version computes in reduced precision (an INT8 or FP16
model, or an FP32 model that OpenVINO runs in BF16 on a BF16 CPU), and refuses what falls below the
gate (``service.engine.accuracy_check``). Here: write the inputs and FP32 ONNX Runtime's logits
(``modelrepo.checkset``), and record the gate, the score the export measured on exactly those inputs
(lowest over the CPU runtimes that can serve the model here, each in batches as the service runs them)
and the exporting CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from export.parity import Reference, Runner, run_batched
from modelrepo.checkset import CHECK_FILE, PARAM_CHECK, PARAM_CPU, PARAM_MIN, PARAM_SCORE, agreement, write_check
from modelrepo.cpu import this_cpu

logger = logging.getLogger(__name__)


def write_gate_check(version_dir: Path, ref: Reference, gate: float, runners: Iterable[Runner],
                     batch: int) -> dict[str, str]:
    """Write ``CHECK_FILE`` into ``version_dir``; the config parameters that record it and its gate.

    ``runners`` run the model as it will be served in reduced precision here (none: an FP32 model on a
    CPU without BF16, whose reduced-precision execution cannot be measured here; its gate alone is kept).
    """
    path = write_check(version_dir / CHECK_FILE, ref.stored, ref.stored_logits)
    params = {PARAM_CHECK: CHECK_FILE, PARAM_MIN: f"{gate:.4f}", PARAM_CPU: this_cpu().describe()}
    scores = [agreement(ref.stored_logits, run_batched(run, ref.stored, max(1, batch))).score for run in runners]
    if scores:
        params[PARAM_SCORE] = f"{min(scores):.4f}"
    logger.info("wrote the accuracy check set %s (%d inputs, %.1f MB; score here %s, gate %.1f%%)", path,
                len(ref.stored), path.stat().st_size / 1e6, params.get(PARAM_SCORE, "not measured"), 100 * gate)
    return params
