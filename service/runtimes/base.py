"""The runtime Protocol: the service knows nothing of TensorRT or ONNX Runtime types."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    #: what /models and the model_ready metric report, e.g. "onnxruntime-cpu", "tensorrt"
    name: str

    def load(self, model_file: Path, device: str) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` -> float32 logits ``(N, C)``; called from one worker thread."""
        ...

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None: ...

    def close(self) -> None: ...
