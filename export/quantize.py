"""CPU INT8: ONNX Runtime static quantization (QDQ, per-channel) calibrated on real images, and the gate.

The other INT8 method, NNCF on the OpenVINO model, lives in ``export.openvino``; both are gated here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from export.errors import ExportError
from export.onnx_export import check_onnx
from export.parity import Reference, Runner
from modelrepo.config import INPUT_NAME

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.98
CALIB_BATCH = 8


class _Reader(CalibrationDataReader):
    """``CalibrationDataReader``: the calibration tensors in batches, with a progress bar."""

    def __init__(self, data: np.ndarray, batch: int) -> None:
        self.batches = [data[i : i + batch] for i in range(0, len(data), batch)]
        self.bar = tqdm(total=len(data), desc="INT8 calibration", unit="img", leave=False)
        self.it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.it, None)
        if b is None:
            self.bar.close()
            return None
        self.bar.update(len(b))
        return {INPUT_NAME: b}

    def rewind(self) -> None:
        self.it = iter(self.batches)


@dataclass(frozen=True)
class Int8Result:
    path: Path
    agreement: float
    min_agreement: float
    fp32_bytes: int
    int8_bytes: int

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement


def quantize_int8(fp32: Path, out: Path, calib: np.ndarray, batch: int = CALIB_BATCH) -> Path:
    """Static QDQ quantization: per-channel QInt8 weights, QUInt8 activations (VNNI's u8 x s8 path)."""
    if len(calib) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        logger.info("quantization pre-processing done in %.1fs", time.perf_counter() - t0)
        t1 = time.perf_counter()
        reader = _Reader(calib, batch)
        quantize_static(
            str(pre),
            str(out),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    check_onnx(out)
    logger.info("quantized %s on %d images in %.1fs", out.name, len(calib), time.perf_counter() - t1)
    return out


def model_bytes(path: Path) -> int:
    """Size of a model file; for an IR, model.xml + model.bin."""
    size = path.stat().st_size
    return size + path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else size


def gate_int8(ref: Reference, int8: Path, candidate: Runner, min_agreement: float = MIN_AGREEMENT) -> Int8Result:
    """Top-1 agreement of the INT8 model (run by ``candidate``) with FP32 ONNX Runtime on the check set."""
    t0 = time.perf_counter()
    agreement = ref.agreement(candidate)
    res = Int8Result(int8, agreement, min_agreement, model_bytes(ref.fp32), model_bytes(int8))
    logger.info("INT8 top-1 agreement with FP32 on %d check images: %.1f%% (gate %.1f%%) in %.1fs",
                len(ref.check), 100 * agreement, 100 * min_agreement, time.perf_counter() - t0)
    return res
