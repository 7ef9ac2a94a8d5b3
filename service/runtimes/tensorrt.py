"""TensorRT plans (platform ``tensorrt_plan``) and ONNX models through the managed engine cache
(``engine_cache``), with PyTorch CUDA tensors as device buffers.

A ``tensorrt_plan`` model's plan is chosen by ``cc_model_filenames`` when the config has one (Triton's
per-GPU-kind map). An ONNX model is served from a plan in its version's ``.engines/`` cache, built on
first use (``build_cached_engine``).

UNTESTED here: this project's machines have no GPU and TensorRT cannot be installed on the lent GPU
machine, so this path has not run. It uses the TensorRT 10 name-based tensor API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.engine_cache import (
    PRECISION_PARAM,
    engine_dir,
    engine_key,
    engine_precision,
    get_or_build,
    plan_for_gpu,
)
from modelrepo.errors import RepositoryError
from service.runtimes.base import DeviceKind, LoadSpec, warmup_sizes

logger = logging.getLogger(__name__)


def _require(model_file: Path, device: str) -> tuple[Any, Any]:
    """``(tensorrt, torch)``, or a RepositoryError saying what is missing (no GPU, no package)."""
    if device == "cpu":
        raise RepositoryError("a TensorRT engine needs a GPU; --device cpu serves the ONNX model instead")
    try:
        import tensorrt as trt
        import torch
    except ImportError as e:
        raise RepositoryError(
            f"TensorRT for {model_file} needs the tensorrt and torch packages (pip install '.[gpu]'): {e}"
        ) from e
    if not torch.cuda.is_available():
        raise RepositoryError(f"TensorRT for {model_file} needs a CUDA GPU and none is visible")
    return trt, torch


def _compute_capability(torch: Any) -> str:
    return "{}.{}".format(*torch.cuda.get_device_capability())


def _config_of(model_file: Path) -> Any:
    from modelrepo.config import read_config

    return read_config(model_file.parent.parent)


def build_cached_engine(spec: LoadSpec, max_batch: int | None = None) -> Path:
    """The plan for ``spec.model_file`` (an ONNX model) on this GPU, from its version's engine cache.

    Built on first use (minutes; once per key even with several starters sharing the volume) with
    the profile 1 / max/2 / max, ``max_batch`` defaulting to the config's ``max_batch_size``, at the
    precision pinned by the operator, else the config's ``tensorrt.precision``, else fp16.
    """
    trt, torch = _require(spec.model_file, spec.device)
    shape = spec.input_shape
    if max_batch is None or len(shape) != 3:
        cfg = _config_of(spec.model_file)
        max_batch = max_batch or cfg.max_batch_size or 1
        shape = shape if len(shape) == 3 else tuple(int(d) for d in cfg.input[0].dims)
    if len(shape) != 3:
        raise RepositoryError(f"{spec.model_file}: a TensorRT engine needs input dims [3, H, W], got {list(shape)}")
    key = engine_key(_compute_capability(torch), str(trt.__version__), spec.params, max_batch, shape,
                     spec.precision)
    if key.precision == "int8":
        raise RepositoryError(
            f"{PRECISION_PARAM}=int8 needs calibration images, which the service does not have: build an INT8 "
            "plan with `python -m export --trt --precision int8`, or use fp16"
        )
    timing = engine_dir(spec.model_file.parent) / f"{key.stem}.timing"

    def build(onnx_path: Path, out: Path) -> None:
        from modelrepo.tensorrt_build import build_engine

        try:
            build_engine(onnx_path, out, key.precision, (shape[0], shape[1], shape[2]), key.profile, timing)
        except RepositoryError as e:
            raise RepositoryError(f"building a TensorRT engine from {onnx_path} failed: {e}") from e

    return get_or_build(spec.model_file, key, build, logger)


class TensorRTRuntime:
    name = "tensorrt"
    label = "tensorrt"
    device_kind: DeviceKind = "gpu"

    def __init__(self) -> None:
        self.precision = "fp16"
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._torch: Any = None
        self._input = "input"
        self._output = "logits"

    def load(self, spec: LoadSpec) -> None:
        """A ``tensorrt_plan`` (the plan for this GPU), or an ONNX model through the managed engine cache."""
        trt, torch = _require(spec.model_file, spec.device)
        here = _compute_capability(torch)
        if spec.model_file.suffix == ".onnx":  # the file's format, not the model's name
            plan = build_cached_engine(spec)
            self.precision = engine_precision(spec.params, spec.precision)
        else:
            plan = plan_for_gpu(spec.model_file, spec.params, here, str(trt.__version__))
            self.precision = spec.params.get("export.precision", "fp16")
        self._torch = torch
        trt_logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(trt_logger).deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise RepositoryError(f"TensorRT could not deserialize {plan}")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._input, self._output = inputs[0], outputs[0]
        logger.info("loaded TensorRT plan %s (TensorRT %s, cc %s)", plan, trt.__version__, here)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).pin_memory().to("cuda", non_blocking=True)
            self._context.set_input_shape(self._input, tuple(x.shape))
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
            self._context.set_tensor_address(self._input, x.data_ptr())
            self._context.set_tensor_address(self._output, y.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            result = y.to("cpu", non_blocking=False)
        self._stream.synchronize()
        return np.asarray(result.numpy())

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        warmup_sizes(self, batch_sizes, input_shape)

    def close(self) -> None:
        self._context = None
        self._engine = None
