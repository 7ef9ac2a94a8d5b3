"""``--runtime auto`` across a model's variants: the best one that loaded here serves its name.

The exporter writes a model's other formats as separate models that name it (``NAME_trt``:
``serve.fallback_model=NAME``; ``NAME_pt``: ``serve.variant_of=NAME``). On a GPU machine the ONNX
model ``NAME`` may only get ONNX Runtime's CPU provider while ``NAME_pt`` runs on the GPU: then
requests for ``NAME`` go to ``NAME_pt``. The order is the GPU before the CPU, then the runtime
registry's rank on that device: TensorRT plan > ONNX Runtime CUDA > PyTorch CUDA > (CPU) OpenVINO >
ONNX Runtime > PyTorch. A model asked for by its variant's own name is always served as itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelrepo.config import FALLBACK_PARAM

VARIANT_PARAM = "serve.variant_of"


@dataclass(frozen=True)
class Served:
    """What one loaded model runs on."""

    runtime: str  # registry name
    device: str  # "cuda" | "cpu"
    params: Mapping[str, str]


def variant_base(params: Mapping[str, str]) -> str | None:
    return params.get(VARIANT_PARAM) or params.get(FALLBACK_PARAM) or None


def rank(served: Served, ranks: Mapping[str, Mapping[str, int]]) -> tuple[int, int]:
    """Lower is better: the GPU first, then the registry's rank of the runtime on that device."""
    return (0 if served.device == "cuda" else 1, ranks.get(served.runtime, {}).get(served.device, 99))


def routes(loaded: Mapping[str, Served], ranks: Mapping[str, Mapping[str, int]]) -> dict[str, tuple[str, str]]:
    """base name -> (the variant that serves it, why), for every base a loaded variant beats.

    ``loaded``: the models that are ready here. A base that is not loaded (failed, or not configured)
    is served by its best variant too."""
    best: dict[str, str] = {}
    for name, served in sorted(loaded.items()):
        base = variant_base(served.params)
        if not base or base == name:
            continue
        current = best.get(base)
        if current is None or rank(served, ranks) < rank(loaded[current], ranks):
            best[base] = name
    out: dict[str, tuple[str, str]] = {}
    for base, variant in best.items():
        v = loaded[variant]
        b = loaded.get(base)
        if b is not None and rank(b, ranks) <= rank(v, ranks):
            continue
        here = f"{b.runtime} on {b.device}" if b is not None else "not loaded"
        out[base] = (variant, f"auto: served by {variant} ({v.runtime} on {v.device}), which ranks above {base} "
                              f"({here}): GPU first, then TensorRT > ONNX Runtime > PyTorch")
    return out
