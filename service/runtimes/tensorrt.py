"""TensorRT plans (platform ``tensorrt_plan``) with PyTorch CUDA tensors as device buffers.

UNTESTED here: this project's machines have no GPU and TensorRT cannot be installed on the lent GPU
machine, so this path has not run. It uses the TensorRT 10 name-based tensor API.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from service.errors import RepositoryError
from service.runtimes.base import DeviceKind, LoadSpec, warmup_sizes

logger = logging.getLogger(__name__)


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
        model_file, device = spec.model_file, spec.device
        if device == "cpu":
            raise RepositoryError("a TensorRT plan needs a GPU; --device cpu serves the ONNX model instead")
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise RepositoryError(
                f"TensorRT plan {model_file} needs the tensorrt and torch packages (pip install '.[gpu]'): {e}"
            ) from e
        if not torch.cuda.is_available():
            raise RepositoryError(f"TensorRT plan {model_file} needs a CUDA GPU and none is visible")
        params = spec.params
        self.precision = params.get("export.precision", "fp16")
        built_cc = params.get("tensorrt.compute_capability")
        here = "{}.{}".format(*torch.cuda.get_device_capability())
        if built_cc and built_cc != here:
            raise RepositoryError(
                f"plan {model_file} was built for compute capability {built_cc}, this GPU is {here}: rebuild it "
                "with `python -m export --trt` on this GPU kind (the ONNX model is served meanwhile)"
            )
        built_trt = params.get("tensorrt.version")
        if built_trt and built_trt != trt.__version__:
            raise RepositoryError(
                f"plan {model_file} was built with TensorRT {built_trt}, this is {trt.__version__}: rebuild it"
            )
        self._torch = torch
        trt_logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(trt_logger).deserialize_cuda_engine(model_file.read_bytes())
        if engine is None:
            raise RepositoryError(f"TensorRT could not deserialize {model_file}")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._input, self._output = inputs[0], outputs[0]
        logger.info("loaded TensorRT plan %s (TensorRT %s, cc %s)", model_file, trt.__version__, here)

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
