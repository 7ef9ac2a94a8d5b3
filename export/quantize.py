"""CPU INT8: ONNX Runtime static quantization (QDQ, per-channel) calibrated on real images, and the gate.

**The format is chosen by measurement, among formats whose numbers do not depend on the CPU.** x86 CPUs
without VNNI (AMD Zen 1-3, Intel before Cascade Lake) multiply u8 activations by s8 weights with
``vpmaddubsw``, whose 16-bit pair sums saturate: an INT8 model with full 8-bit weights computes other
numbers there than on the VNNI or AMX machine that gated it (EfficientNet-Lite0: top-1 agreement with
FP32 0.82 with VNNI, 0.54 without, measured under QEMU's AVX2-only ``-cpu EPYC``). So the candidates are:

- ``u8s8-rr``: u8 activations, 7-bit s8 weights (``reduce_range``). 2 x 255 x 64 < 32768, so it cannot
  saturate: the same numbers on every CPU, at u8 x s8 speed. Loses accuracy on some networks (depthwise
  convolutions: EfficientNet-Lite0 scores 0.92 on the gate's check set).
- ``u8u8``: u8 weights as well; exact everywhere too (widened to 16 bits before the multiply), slower on
  VNNI/AMX CPUs where it has no fast kernel.
- ``u8s8``: full 8-bit s8 weights: most accurate with VNNI/AMX, saturates without. Only on request
  (``--int8-format u8s8``), recorded as needing VNNI; the service's load-time check refuses it where it fails.

``auto`` tries the portable ones in that order and keeps the first that passes the gate. The other INT8
method, NNCF on the OpenVINO model, lives in ``export.openvino``; both are gated in ``export.pipeline``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from export.errors import ExportError
from export.onnx_export import check_onnx
from export.parity import Reference, Runner
from modelrepo.checkset import Agreement
from modelrepo.config import INPUT_NAME

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.98
CALIB_BATCH = 8


@dataclass(frozen=True)
class Int8Format:
    name: str
    activation: QuantType
    weight: QuantType
    reduce_range: bool
    portable: bool  # the same numbers on every x86 CPU (no 16-bit saturation anywhere)
    words: str

    def kwargs(self) -> dict[str, Any]:
        return {"activation_type": self.activation, "weight_type": self.weight, "reduce_range": self.reduce_range}


INT8_FORMATS = {
    f.name: f
    for f in (
        Int8Format("u8s8-rr", QuantType.QUInt8, QuantType.QInt8, True, True,
                   "QDQ per-channel, u8 activations x 7-bit s8 weights: exact on every x86 CPU"),
        Int8Format("u8u8", QuantType.QUInt8, QuantType.QUInt8, False, True,
                   "QDQ per-channel, u8 activations x u8 weights: exact on every x86 CPU, slower with VNNI/AMX"),
        Int8Format("u8s8", QuantType.QUInt8, QuantType.QInt8, False, False,
                   "QDQ per-channel, u8 activations x 8-bit s8 weights: needs VNNI or AMX (saturates on AVX2/AVX-512 "
                   "CPUs without VNNI)"),
    )
}
AUTO = "auto"
AUTO_ORDER = ("u8s8-rr", "u8u8")


def candidates(choice: str | None) -> list[Int8Format]:
    """The formats an export tries, in order (``None`` or ``auto``: the portable ones)."""
    names = AUTO_ORDER if choice in (None, AUTO) else (choice,)
    return [INT8_FORMATS[n] for n in names]


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
    agreement: Agreement
    min_agreement: float
    fp32_bytes: int
    int8_bytes: int

    @property
    def passed(self) -> bool:
        return self.agreement.score >= self.min_agreement


class Quantizer:
    """Quantizes one FP32 ONNX model in any ``Int8Format``; ONNX Runtime's pre-processing runs once."""

    def __init__(self, fp32: Path, calib: np.ndarray, workdir: Path, batch: int = CALIB_BATCH) -> None:
        if len(calib) == 0:
            raise ExportError("INT8 calibration needs at least one image")
        self.calib, self.batch = calib, batch
        self._tmp = tempfile.TemporaryDirectory(dir=workdir)
        self.pre = Path(self._tmp.name) / "preprocessed.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(fp32), str(self.pre), skip_symbolic_shape=False)
        logger.info("quantization pre-processing done in %.1fs", time.perf_counter() - t0)

    def quantize(self, fmt: Int8Format, out: Path) -> Path:
        t0 = time.perf_counter()
        quantize_static(str(self.pre), str(out), calibration_data_reader=_Reader(self.calib, self.batch),
                        quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        **fmt.kwargs())
        check_onnx(out)
        logger.info("quantized %s (%s) on %d images in %.1fs", out.name, fmt.name, len(self.calib),
                    time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def model_bytes(path: Path) -> int:
    """Size of a model file; for an IR, model.xml + model.bin."""
    size = path.stat().st_size
    return size + path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else size


def gate_int8(ref: Reference, int8: Path, candidate: Runner, min_agreement: float = MIN_AGREEMENT) -> Int8Result:
    """The INT8 model (run by ``candidate``) scored against FP32 ONNX Runtime on the check set."""
    t0 = time.perf_counter()
    agreement = ref.score(candidate)
    res = Int8Result(int8, agreement, min_agreement, model_bytes(ref.fp32), model_bytes(int8))
    logger.info("INT8 gate on %d check images: %s (gate %.1f%%) in %.1fs", agreement.images, agreement.summary(),
                100 * min_agreement, time.perf_counter() - t0)
    return res
