"""Runtime selection by platform, preference and what this machine has."""

from __future__ import annotations

from service.config import Settings
from service.errors import RepositoryError
from service.runtimes.base import Runtime


def create_runtime(platform: str, settings: Settings) -> Runtime:
    if settings.runtime == "torch":
        raise RepositoryError(
            "runtime 'torch' serves TorchScript models (platform pytorch_libtorch), which the exporter "
            "does not write yet: use --runtime auto or onnxruntime"
        )
    if platform == "tensorrt_plan":
        if settings.runtime == "onnxruntime":
            raise RepositoryError("a tensorrt_plan model needs --runtime auto or tensorrt")
        from service.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime()
    if platform == "onnxruntime_onnx":
        from service.runtimes.onnxruntime import OnnxRuntime

        return OnnxRuntime(settings.intra_op_threads, prefer_tensorrt=settings.runtime in ("auto", "tensorrt"))
    raise RepositoryError(f"platform {platform!r} is not supported: use onnxruntime_onnx or tensorrt_plan")
