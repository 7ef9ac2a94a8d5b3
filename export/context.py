"""What the steps of one export share: its options, the loaded model, the staging area and the FP32 reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from export.eval_gate import EvalGate
from export.models import LoadedModel
from export.options import ExportOptions
from export.parity import Reference
from export.repo_writer import ConfigSpec, Staging

ConfigFn = Callable[..., ConfigSpec]


@dataclass
class ExportResult:
    written: list[Path] = field(default_factory=list)
    parity_max_abs_diff: float = 0.0
    agreements: dict[str, float] = field(default_factory=dict)
    bf16_gates: dict[str, str] = field(default_factory=dict)  # model name -> export.bf16_gate


@dataclass
class ExportContext:
    """What the steps of one export share."""

    opts: ExportOptions
    loaded: LoadedModel
    st: Staging
    version: int
    config: ConfigFn
    ref: Reference  # FP32 ONNX Runtime on the check set and photos, computed once
    bf16_skip: str | None
    result: ExportResult
    evaluation: EvalGate | None = None  # --eval-dir: INT8 and BF16 judged on labelled top-1
