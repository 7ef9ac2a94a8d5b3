"""ONNX Runtime: TensorRT EP -> CUDA EP on a GPU, the CPU EP otherwise; session options set on purpose."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from service.runtimes.base import DeviceKind, LoadSpec, check_input_shape, warmup_sizes

logger = logging.getLogger(__name__)

_PROVIDER_NAMES = {
    "TensorrtExecutionProvider": "onnxruntime-tensorrt",
    "CUDAExecutionProvider": "onnxruntime-cuda",
    "CPUExecutionProvider": "onnxruntime-cpu",
}


def choose_providers(available: list[str], device: str) -> list[Any]:
    """The provider list to ask for, best first; the CPU EP always ends it as the fallback."""
    chosen: list[Any] = []
    if device == "cuda":
        if "TensorrtExecutionProvider" in available:
            chosen.append(("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True}))
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self) -> None:
        self.label = "onnxruntime-cpu"
        self.device_kind: DeviceKind = "cpu"
        self.precision = "fp32"
        self._session: Any = None
        self._input = "input"
        self._output = "logits"
        self._on_gpu = False

    def load(self, spec: LoadSpec) -> None:
        import onnxruntime as ort

        model_file, device = spec.model_file, spec.device
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # One batch runs at a time per model; all cores go to it. Spinning threads would steal the
        # cores that decode the next batch's images, so they sleep between batches instead.
        so.intra_op_num_threads = spec.threads or (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = True
        if device == "cuda" and engine_cache_dir(model_file):
            os.makedirs(engine_cache_dir(model_file), exist_ok=True)
        providers = choose_providers(ort.get_available_providers(), device)
        providers = [
            (p[0], {**p[1], "trt_engine_cache_path": str(engine_cache_dir(model_file))})
            if isinstance(p, tuple)
            else p
            for p in providers
        ]
        try:
            self._session = ort.InferenceSession(str(model_file), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            from modelrepo.errors import RepositoryError

            raise RepositoryError(f"ONNX Runtime cannot load {model_file}: {type(e).__name__}: {e}") from e
        active = self._session.get_providers()[0]
        self.label = _PROVIDER_NAMES.get(active, f"onnxruntime-{active}")
        self._on_gpu = active != "CPUExecutionProvider"
        self.device_kind = "gpu" if self._on_gpu else "cpu"
        # the TensorRT EP is asked for FP16 (trt_fp16_enable); otherwise the model file's own precision
        own = spec.params.get("export.precision", "fp32")
        self.precision = "fp16" if active == "TensorrtExecutionProvider" else own
        inp = self._session.get_inputs()[0]
        check_input_shape(model_file, list(inp.shape), spec.input_shape)
        self._input = inp.name
        self._output = self._session.get_outputs()[0].name
        logger.info("loaded %s on %s (providers %s)", model_file, self.label, self._session.get_providers())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._on_gpu:
            # I/O binding: copy the batch to the device once, keep the output there until read back.
            binding = self._session.io_binding()
            binding.bind_cpu_input(self._input, batch)
            binding.bind_output(self._output, "cuda")
            self._session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0])
        out = self._session.run([self._output], {self._input: batch})[0]
        return np.asarray(out)

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        warmup_sizes(self, batch_sizes, input_shape)

    def close(self) -> None:
        self._session = None


def engine_cache_dir(model_file: Path) -> Path:
    """TensorRT EP engine cache inside the version folder (Triton ignores it) (docs/reference/repository-format.md)."""
    return model_file.parent / ".engines"
