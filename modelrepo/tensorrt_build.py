"""The one TensorRT build: ONNX -> a serialized plan with one optimisation profile.

Both the exporter (``python -m export --trt``, ``--trt-cache``) and the service's managed engine cache
call it. Needs the TensorRT 10 Python package and a CUDA GPU; every TensorRT/CUDA import is lazy so
this module imports on CPU-only machines.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.config import INPUT_NAME
from modelrepo.errors import EngineBuildError

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
CALIB_BATCH = 8
CALIB_CACHE = "calibration.cache"


def require() -> Any:
    """The ``tensorrt`` module, or a clear error when TensorRT or a CUDA GPU is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineBuildError(
            "--trt needs the TensorRT Python package (pip install -e '.[gpu]') and an NVIDIA GPU; "
            "it is not installed here. Leave out --trt to export the ONNX model only"
        ) from e
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("--trt needs an NVIDIA GPU and none is visible (torch.cuda.is_available() is False)")
    return trt


def compute_capability() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _progress_monitor(trt: Any) -> Any | None:
    """An ``IProgressMonitor`` drawing one tqdm bar per build phase (None on TensorRT < 10)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm import tqdm

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.bars: dict[str, Any] = {}
            self.lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self.lock:
                depth = len(self.bars)
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.lock:
                bar = self.bars.get(phase_name)
                if bar is not None:
                    bar.update(1)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()


def _calibrator(trt: Any, data: np.ndarray, batch: int, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding the calibration images through a CUDA tensor."""
    import torch
    from tqdm import tqdm

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = [data[i : i + batch] for i in range(0, len(data) - batch + 1, batch)]
            self.index = 0
            self.device = torch.empty((batch, *data.shape[1:]), dtype=torch.float32, device="cuda")
            self.bar = tqdm(total=len(self.batches) * batch, desc="TensorRT INT8 calibration", unit="img")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                self.bar.close()
                return None
            self.device.copy_(torch.from_numpy(self.batches[self.index]))
            torch.cuda.synchronize()
            self.index += 1
            self.bar.update(batch)
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data_: Any) -> None:
            cache.write_bytes(bytes(data_))

    if len(data) < batch:
        raise EngineBuildError(f"TensorRT INT8 calibration needs at least {batch} images, got {len(data)}")
    return Calibrator()


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    shape: tuple[int, int, int],
    profile: tuple[int, int, int],
    timing_cache: Path,
    calib: np.ndarray | None = None,
) -> Path:
    """Parse ``onnx_path``, build a plan with one optimisation profile (min/opt/max batch), save it."""
    trt = require()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    lo, opt, hi = profile
    prof = builder.create_optimization_profile()
    prof.set_shape(INPUT_NAME, (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(prof)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    calibrator = None
    if precision == "int8":
        if calib is None:
            raise EngineBuildError("TensorRT INT8 needs calibration images")
        config.set_flag(trt.BuilderFlag.INT8)
        cb = min(CALIB_BATCH, hi)
        cprof = builder.create_optimization_profile()
        cprof.set_shape(INPUT_NAME, (cb, *shape), (cb, *shape), (cb, *shape))
        config.set_calibration_profile(cprof)
        calibrator = _calibrator(trt, calib, cb, plan_path.parent / CALIB_CACHE)
        config.int8_calibrator = calibrator
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError("TensorRT failed to build the engine (see the TensorRT log lines above)")
    plan_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    logger.info("built TensorRT %s engine %s in %.1fs", precision, plan_path, time.perf_counter() - t0)
    return plan_path
