"""What one export run is asked to do (the CLI's flags as data); shared by the pipeline and its steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.onnx_export import MIN_OPSET
from export.parity import FP32_ATOL

PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "openvino", "pytorch")
# ort-qdq: ONNX Runtime QDQ ONNX (served by ONNX Runtime or OpenVINO); nncf: NNCF-quantized OpenVINO IR.
# OpenVINO runs both equally fast (resnet50, 2-core Zen 5 with AVX-512 VNNI, 2 threads: 202 vs 204 img/s at
# batch 1, 221 vs 220 at batch 8), so the default is the QDQ ONNX model, which both runtimes can serve.
INT8_METHODS = ("ort-qdq", "nncf")
DEFAULT_INT8_METHOD = "ort-qdq"
# ort-qdq's formats (export/quantize.py): auto tries the portable ones (u8s8-rr, then u8u8) and keeps the
# first that passes the gate; u8s8 (8-bit weights) is accurate only on CPUs with VNNI or AMX.
INT8_FORMATS = ("auto", "u8s8-rr", "u8u8", "u8s8")


@dataclass
class ExportOptions:
    arch: str
    weights: str
    repo: Path
    name: str | None = None
    version: int | None = None
    labels_file: Path | None = None
    max_batch_size: int = 32
    preferred: list[int] | None = None
    opset: int = MIN_OPSET
    simplify: bool = True
    fp16: bool = False
    precision: str = "fp32"
    calib_dir: Path | None = None
    trt: bool = False
    fallback_random: bool = False
    min_agreement: float | None = None
    transform_input: bool | None = None
    atol: float = FP32_ATOL
    format: str = "onnx"  # onnx | openvino (also NAME_ov, an OpenVINO IR) | pytorch (also NAME_pt, TorchScript)
    int8_method: str | None = None  # None: DEFAULT_INT8_METHOD
    int8_format: str | None = None  # ort-qdq: None/"auto" tries export.quantize.AUTO_ORDER
    bf16_gate: bool | None = None  # None: on when OpenVINO is installed
    eval_dir: Path | None = None  # labelled set (ImageFolder or CSV) gating INT8 and BF16 on top-1 drop
    max_top1_drop: float | None = None  # percentage points; None: export.eval_gate.DEFAULT_MAX_DROP
