"""A served model's three steps: pre -> core -> post.

* **pre** (request bytes -> payload) runs on the decode pool, per image; a bad image fails there,
  alone. On the CPU it decodes and preprocesses to a float32 ``(3, H, W)`` array; for a CUDA model
  with GPU decode it only checks a JPEG's header and hands the bytes on (``service.engine.gpu_decode``).
* **core** (payloads -> logits) is one step per runtime instance, run by the batcher on that
  instance's thread: collate the batch (``np.stack``, or decode the JPEGs on the GPU into device
  memory) and infer.
* **post** (logits -> top-k probabilities) runs per request.

The batcher sees only payloads and steps (``service.engine.batching.Step``); the route sees only pre and
post. Nothing here imports torch: the GPU pipeline lives in ``service.engine.gpu_decode`` and is built only
for a CUDA runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from modelrepo.image_preprocess import Normalizer, preprocess
from modelrepo.preprocess import Preprocess
from service.engine.steps import Step, stacked
from service.runtimes import Runtime

logger = logging.getLogger(__name__)

#: ``--gpu-decode``: auto = on for a runtime that takes device tensors on a GPU
GPU_DECODE_MODES = ("auto", "on", "off")


@dataclass
class Pipeline:
    #: "cpu" (Pillow decode, numpy batches) or "gpu-jpeg" (nvJPEG decode into device memory)
    kind: str
    pre: Callable[[bytes], Any]
    steps: list[Step]
    #: run once at load, after the runtimes' own warm-up (a device decoder's first call is slow)
    warmup: Callable[[], None] = lambda: None


def takes_tensors(runtime: Runtime) -> bool:
    """Whether the runtime can take a batch already in (device) memory as a torch tensor."""
    return callable(getattr(runtime, "infer_tensor", None)) and getattr(runtime, "torch_device", None) is not None


def wants_gpu_decode(mode: str, runtimes: list[Runtime]) -> bool:
    """``on`` forces the device-side pipeline (on a CPU runtime too: torchvision decodes there, which
    is how CI exercises it); ``auto`` uses it for a CUDA runtime that takes tensors."""
    if mode == "off" or not runtimes or not all(takes_tensors(r) for r in runtimes):
        return False
    return mode == "on" or all(r.device_kind == "gpu" for r in runtimes)


def build_pipeline(runtimes: list[Runtime], pp: Preprocess, max_pixels: int, gpu_decode: str = "auto") -> Pipeline:
    normalizer = Normalizer(pp)
    cpu_pre = partial(preprocess, pp=pp, max_pixels=max_pixels, normalizer=normalizer)
    if wants_gpu_decode(gpu_decode, runtimes):
        from service.engine.gpu_decode import JpegDecoder, device_step, warm_decoder

        decoder = JpegDecoder(pp, max_pixels, cpu_pre)
        steps = [device_step(decoder, rt) for rt in runtimes]
        return Pipeline("gpu-jpeg", decoder.pre, steps, partial(warm_decoder, decoder, steps))
    return Pipeline("cpu", cpu_pre, [stacked(rt.infer) for rt in runtimes])
