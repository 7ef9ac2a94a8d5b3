"""OpenVINO: ONNX -> IR (``NAME_ov``, Triton backend ``openvino``), NNCF INT8, and CPU runners for the gates.

``openvino`` and ``nncf`` are optional: every import of them is lazy, so ``python -m export`` runs
without them for ONNX output, and asking for anything OpenVINO without them is one clear error.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.parity import FP32_ATOL, ParityReport, Runner, check_parity

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install openvino nncf"
IR_FILE = "model.xml"  # Triton's OpenVINO backend default model filename (+ model.bin beside it)
DEVICE = "CPU"
THREADS = 2
# The service's key pinning OpenVINO's inference precision (f32 | bf16 | f16; absent: OpenVINO's default).
PRECISION_PARAM = "openvino.inference_precision"


def require(what: str) -> Any:
    """The ``openvino`` module, or an ExportError naming ``what`` needed it and how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ExportError(f"{what} needs OpenVINO, which is not installed here: {INSTALL_HINT}") from e
    return openvino


def require_nncf(what: str) -> Any:
    require(what)
    try:
        import nncf
    except ImportError as e:
        raise ExportError(f"{what} needs NNCF, which is not installed here: {INSTALL_HINT}") from e
    return nncf


def available() -> bool:
    try:
        require("")
    except ExportError:
        return False
    return True


@functools.cache
def core() -> Any:
    return require("OpenVINO inference").Core()


def version() -> str:
    return str(require("OpenVINO").get_version())


def bf16_capable() -> bool:
    """Whether this CPU runs BF16 natively in OpenVINO (AVX512_BF16 or AMX)."""
    return "BF16" in core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


def compile_cpu(model: Path, precision: str | None = None, threads: int = THREADS) -> Any:
    """``model`` (.onnx or .xml) compiled for the CPU; ``precision`` is INFERENCE_PRECISION_HINT (None: default)."""
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    t0 = time.perf_counter()
    compiled = core().compile_model(str(model), DEVICE, cfg)
    logger.debug("compiled %s for OpenVINO %s (%s) in %.1fs", model.name, DEVICE, precision or "default",
                 time.perf_counter() - t0)
    return compiled


def ov_runner(model: Path, precision: str | None = None, threads: int = THREADS) -> Runner:
    request = compile_cpu(model, precision, threads).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(out[0], dtype=np.float32)  # a copy: the request reuses its output buffer

    return run


def convert_ir(onnx_path: Path, xml: Path) -> Path:
    """ONNX -> OpenVINO IR (``xml`` + its ``.bin``), FP32 weights kept as they are."""
    ov = require("--format openvino")
    t0 = time.perf_counter()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    logger.info("converted %s to OpenVINO IR %s in %.1fs", onnx_path.name, xml.name, time.perf_counter() - t0)
    return xml


def gate_ir(xml: Path, reference: Runner, inputs: dict[str, np.ndarray], atol: float = FP32_ATOL) -> ParityReport:
    """OpenVINO CPU in f32 vs the reference (ONNX Runtime FP32) on the ONNX gate's inputs."""
    return check_parity(reference, ov_runner(xml, "f32"), inputs, atol)


#: the NNCF format this exporter writes (``export.int8_format``)
NNCF_FORMAT = "nncf-7bit"
NNCF_WORDS = "NNCF per-channel, 7-bit weights in every layer (overflow fix): exact on every x86 CPU"


def nncf_parameters() -> Any:
    """NNCF's advanced parameters: portable 7-bit weights, activation ranges from the whole calibration set.

    - Weights: 7 bits in every layer (``OverflowFix.ENABLE``). OpenVINO on a CPU without VNNI (AVX2, or
      AVX-512 before Cascade Lake) adds u8 x s8 products in saturating 16-bit pairs; 7-bit weights cannot
      overflow there, so the model computes the same numbers on every x86 CPU. NNCF's default fixes the
      first layer only, and this exporter used to disable it: measured on EfficientNet-Lite0 under QEMU's
      AVX2-only CPU, see ``export.quantize`` and the README's precision table.
    - Activation ranges: min/max over the whole calibration set (NNCF's default, the mean of per-image
      extremes, clips too much on a small calibration set: 96 % vs 100 % top-1 agreement on the tests'
      photo classifier).
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE,
                                          activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)


def quantize_nncf(fp32_onnx: Path, xml: Path, calib: np.ndarray) -> Path:
    """NNCF post-training INT8 quantization of the OpenVINO model, calibrated one image at a time."""
    nncf = require_nncf("--int8-method nncf")
    ov = require("--int8-method nncf")
    if len(calib) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    t0 = time.perf_counter()
    model = ov.convert_model(str(fp32_onnx))
    # One image per item: NNCF's statistics (and fast bias correction) expect batch 1.
    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib), advanced_parameters=nncf_parameters())
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    logger.info("quantized %s with NNCF on %d images in %.1fs", xml.name, len(calib), time.perf_counter() - t0)
    return xml
