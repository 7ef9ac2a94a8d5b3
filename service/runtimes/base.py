"""The runtime Protocol and its load spec: the service knows nothing of TensorRT, OpenVINO or ONNX Runtime types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

#: where a runtime computes: what /models shows and what batching policy suits it
DeviceKind = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class LoadSpec:
    """What a runtime needs to load one model version, and nothing more (never the whole Settings)."""

    model_file: Path
    #: the model's config.pbtxt ``parameters`` (preprocessing, provenance, runtime pins)
    params: dict[str, str] = field(default_factory=dict)
    #: "cpu" or "cuda" (already resolved from --device auto by the registry)
    device: str = "cpu"
    #: compute threads; 0 = one per core
    threads: int = 0
    #: the config's input dims without the batch axis, e.g. (3, 224, 224): a model file that disagrees is refused
    input_shape: tuple[int, ...] = ()
    #: an operator's precision pin (--inference-precision), overriding the config's; None = not pinned
    precision: str | None = None
    #: where the runtime may keep compiled models between starts (``--compile-cache``); None = no cache
    cache_dir: Path | None = None


class Runtime(Protocol):
    #: registry name: "onnxruntime", "openvino", "tensorrt", "pytorch" (``service.runtimes.registry``)
    name: str
    #: what /models and the model_ready metric show, e.g. "openvino-cpu", "onnxruntime-cuda", "tensorrt"
    label: str
    device_kind: DeviceKind
    #: the precision the runtime computes in once loaded: "fp32", "bf16", "fp16", "int8"
    precision: str

    def load(self, spec: LoadSpec) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` -> float32 logits ``(N, C)``; called from one worker thread."""
        ...

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None: ...

    def close(self) -> None: ...


def warmup_sizes(runtime: Runtime, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
    """Run each batch size once (first-shape allocations and kernel choices happen here, not on a request)."""
    for n in batch_sizes:
        runtime.infer(np.zeros((n, *input_shape), dtype=np.float32))


def check_input_shape(model_file: Path, found: list[object], expected: tuple[int, ...]) -> None:
    """Refuse a model whose input (without the batch axis) disagrees with its config.pbtxt dims.

    ``found`` is the model's own input shape including the batch axis; symbolic/dynamic axes
    (strings, None, -1) match anything.
    """
    from modelrepo.errors import RepositoryError

    if not expected:
        return
    dims = list(found)[1:]
    ok = len(dims) == len(expected) and all(
        not isinstance(d, int) or d < 0 or d == e for d, e in zip(dims, expected, strict=True)
    )
    if not ok:
        raise RepositoryError(
            f"{model_file}: the model's input is {list(found)}, but config.pbtxt says [N, "
            f"{', '.join(map(str, expected))}]: re-export the model or fix the config's input dims"
        )
