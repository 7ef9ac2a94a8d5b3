"""The labelled-set gate of an export (``--eval-dir DIR --max-top1-drop POINTS``).

With it, an INT8 model and the BF16 gate are judged on accuracy instead of on top-1 agreement over the
check set: top-1 on ``DIR`` (``export/labelled.py``) of the candidate may be at most ``POINTS``
percentage points below FP32 ONNX Runtime's. Agreement on the check set (jittered package photos, many
with no ImageNet answer, where a real model's top-2 often tie) is still measured and recorded, not
enforced: on EfficientNet-Lite0 OpenVINO BF16 changes its top-1 on 5 of 100 check images, each across a
FP32 logit gap under 0.1, while a labelled set measures what a user loses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from export.errors import ExportError
from export.evaluate import Scores, evaluate
from export.labelled import LabelledSet, read_labelled
from export.parity import Runner
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 1.0  # percentage points of top-1


@dataclass(frozen=True)
class EvalVerdict:
    fp32_top1: float
    top1: float
    max_drop: float
    images: int

    @property
    def drop(self) -> float:
        """Top-1 lost, in percentage points (negative: the candidate scored better)."""
        return 100 * (self.fp32_top1 - self.top1)

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop + 1e-9

    def summary(self, what: str) -> str:
        return (f"{what} top-1 on the labelled set: {100 * self.top1:.1f}% vs FP32 {100 * self.fp32_top1:.1f}% "
                f"({self.images} images): drop {self.drop:+.1f} points (gate: at most {self.max_drop:g})")

    def params(self, prefix: str) -> dict[str, str]:
        return {f"export.{prefix}_eval_top1": f"{self.top1:.4f}", "export.eval_fp32_top1": f"{self.fp32_top1:.4f}",
                f"export.{prefix}_eval_drop": f"{self.drop:.2f}", "export.eval_max_top1_drop": f"{self.max_drop:g}",
                "export.eval_images": str(self.images)}


class EvalGate:
    """A labelled set and FP32 ONNX Runtime's top-1 on it (computed once), against which candidates are judged."""

    def __init__(self, source: Path, labels: list[str], imagenet: bool, pp: Preprocess,
                 max_drop: float = DEFAULT_MAX_DROP) -> None:
        """Reads the labelled set (so a bad one fails before minutes of work); ``bind`` the reference later."""
        self.data: LabelledSet = read_labelled(source, labels, imagenet)
        self.source, self.pp, self.max_drop = source, pp, max_drop
        self.reference: Runner | None = None
        logger.info("eval gate: %d labelled images in %d classes from %s", len(self.data.examples),
                    self.data.classes, source)

    def bind(self, reference: Runner) -> EvalGate:
        """The FP32 ONNX Runtime runner candidates are compared with."""
        self.reference = reference
        return self

    def _scores(self, runner: Runner) -> Scores:
        return evaluate({"run": (runner, self.pp)}, self.data, progress=False).scores["run"]

    @cached_property
    def fp32(self) -> Scores:
        if self.reference is None:
            raise RuntimeError("EvalGate.bind(reference) first")
        return self._scores(self.reference)

    def judge(self, candidate: Runner) -> EvalVerdict:
        got = self._scores(candidate)
        if got.images != self.fp32.images:  # pragma: no cover - the same files, decoded the same way
            raise ExportError(f"eval gate: {got.images} images scored, FP32 scored {self.fp32.images}")
        return EvalVerdict(self.fp32.top1_acc, got.top1_acc, self.max_drop, got.images)
