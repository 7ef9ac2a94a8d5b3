"""OpenVINO on the CPU: ONNX models through its ONNX frontend, and OpenVINO IR (``backend: "openvino"``).

Compiled once per model version. Inference precision is OpenVINO's own default for this CPU (BF16
where the CPU has AMX or AVX-512 BF16, else FP32) unless pinned: by the operator
(``--inference-precision``), else by the model's ``config.pbtxt`` parameter
``openvino.inference_precision`` (the exporter pins ``f32`` when a model fails its BF16 gate), or
Triton's ``INFERENCE_PRECISION_HINT`` parameter. An INT8 model (FakeQuantize / QDQ nodes) reports
``int8``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.errors import RepositoryError
from service.runtimes.base import DeviceKind, LoadSpec, check_input_shape, warmup_sizes
from service.runtimes.compile_cache import CacheEntry, open_entry

logger = logging.getLogger(__name__)

PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
STREAMS_PARAM = "openvino.num_streams"
#: One synchronous request on all cores. Measured on 2 cores (README "Runtimes"): 2 streams fed by an
#: AsyncInferQueue, each batch split across them, gained 2-4 % in bare inference at batch 8-16 and lost
#: 1-5 % once decode threads share the cores, as they do in the service. Bigger machines can set
#: ``openvino.num_streams`` (or Triton's ``NUM_STREAMS``) in config.pbtxt.
DEFAULT_STREAMS = 1
PRECISION_PARAM = "openvino.inference_precision"
_TRITON_PRECISION_PARAM = "INFERENCE_PRECISION_HINT"
_ALIASES = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16", "fp16": "f16", "float16": "f16"}


def pinned_precision(spec: LoadSpec) -> tuple[str | None, str]:
    """The precision hint to compile with (None: OpenVINO's default) and where it came from."""
    for raw, where in (
        (spec.precision, "--inference-precision"),
        (spec.params.get(PRECISION_PARAM), f"config parameter {PRECISION_PARAM}"),
        (spec.params.get(_TRITON_PRECISION_PARAM), f"config parameter {_TRITON_PRECISION_PARAM}"),
    ):
        if raw is None or raw == "" or (raw == "auto" and where.startswith("--")):
            continue
        value = _ALIASES.get(raw.lower(), raw.lower())
        if value not in PRECISIONS:
            raise RepositoryError(
                f"{where} is {raw!r}: use one of {', '.join(PRECISIONS)} (or leave it out for OpenVINO's default)"
            )
        return value, where
    return None, "OpenVINO's default for this CPU"


def ov_message(e: BaseException) -> str:
    """OpenVINO's error text without its ``Exception from src/...cpp:NN:`` source-location lines."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("Exception from ")]
    return " ".join(kept)[:400] or type(e).__name__


def streams_from(params: dict[str, str]) -> int:
    """``openvino.num_streams`` (or Triton's ``NUM_STREAMS``) from the config; DEFAULT_STREAMS otherwise."""
    raw = params.get(STREAMS_PARAM) or params.get("NUM_STREAMS")
    if not raw:
        return DEFAULT_STREAMS
    if not raw.isdigit() or int(raw) < 1:
        raise RepositoryError(f"config parameter {STREAMS_PARAM} is {raw!r}: use a positive integer")
    return int(raw)


def _partial_shape(port: Any) -> list[object]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


def check_ports(spec: LoadSpec, inputs: list[Any], outputs: list[Any]) -> None:
    if len(inputs) != 1 or len(outputs) < 1:
        raise RepositoryError(f"{spec.model_file}: expected one image input and a logits output, found "
                              f"{len(inputs)} inputs and {len(outputs)} outputs")
    check_input_shape(spec.model_file, _partial_shape(inputs[0]), spec.input_shape)


def core_model(core: Any, spec: LoadSpec) -> Any:
    """The model file read by OpenVINO and checked against its config (one image input, its dims)."""
    try:
        model = core.read_model(str(spec.model_file))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses with its frontend's message
        raise RepositoryError(f"OpenVINO cannot read {spec.model_file}: {ov_message(e)}") from e
    check_ports(spec, model.inputs, model.outputs)
    return model


def is_quantized(model: Any) -> bool:
    """An INT8 model: FakeQuantize nodes (NNCF's IR; OpenVINO's ONNX frontend turns QDQ pairs into them)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def device_key(core: Any) -> str:
    """What a compiled blob depends on besides the model and the options: runtime version and CPU."""
    import openvino as ov

    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return f"openvino {ov.get_version()} | {core.get_property('CPU', 'FULL_DEVICE_NAME')} | {' '.join(caps)}"


def _open_cache(core: Any, spec: LoadSpec) -> CacheEntry | None:
    if spec.cache_dir is None:
        return None
    files = [spec.model_file, spec.model_file.with_suffix(".bin")] if spec.model_file.suffix == ".xml" else [
        spec.model_file]
    return open_entry(spec.cache_dir, files, device_key(core))


class OpenVinoRuntime:
    name = "openvino"
    label = "openvino-cpu"
    device_kind: DeviceKind = "cpu"

    def __init__(self) -> None:
        self.precision = "fp32"
        self.streams = 1
        self._compiled: Any = None
        self._request: Any = None
        self._queue: Any = None  # AsyncInferQueue over a multi-stream compiled model, for large batches
        self._parts: list[np.ndarray | None] = []

    def load(self, spec: LoadSpec) -> None:
        import openvino as ov

        if spec.device != "cpu":
            raise RepositoryError("the OpenVINO runtime serves on the CPU only here: use --device cpu or auto")
        hint, source = pinned_precision(spec)
        core = ov.Core()
        model_file = spec.model_file
        if model_file.suffix == ".xml" and not model_file.with_suffix(".bin").is_file():
            raise RepositoryError(f"{model_file} has no {model_file.with_suffix('.bin').name} beside it")
        config: dict[str, Any] = {
            # One batch at a time per model (the batcher feeds it), all cores on that batch.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": spec.threads or (os.cpu_count() or 1),
        }
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        self.streams = streams_from(spec.params)
        t0 = time.monotonic()
        cache = _open_cache(core, spec)
        quantized, how = self._compile_cached(core, spec, config, cache) if cache is not None else (None, "")
        if quantized is None:
            model = core_model(core, spec)
            quantized = is_quantized(model)
            self._compile(core, model, config, model_file)
            how = "compiled"
        self._request = self._compiled.create_infer_request()
        used_type = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        used = used_type.to_string() if hasattr(used_type, "to_string") else str(used_type).lower()
        compute = PRECISIONS.get(_ALIASES.get(used, used), used)
        self.precision = "int8" if quantized else compute
        split = f"; batches of {2 * self.streams}+ split across {self.streams} streams" if self.streams > 1 else ""
        logger.info("loaded %s on openvino-cpu: %s (inference precision %s from %s; %s threads%s); %s in %.2f s",
                    model_file, self.precision, compute, source, self._compiled.get_property("INFERENCE_NUM_THREADS"),
                    split, how, time.monotonic() - t0)

    def _compile(self, core: Any, model: Any, config: dict[str, Any], model_file: Path) -> None:
        """Compile ``model`` (an ov.Model, or its path: what the compiled-model cache looks blobs up by)."""
        import openvino as ov

        try:
            self._compiled = core.compile_model(model, "CPU", config)
            if self.streams > 1:
                # Large batches are split across streams (each on its share of the cores); a batch
                # smaller than that still runs on all cores in the latency-compiled model above.
                multi = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT",
                                                          "NUM_STREAMS": str(self.streams)})
                self._queue = ov.AsyncInferQueue(multi, self.streams)
                self._queue.set_callback(self._collect)
        except Exception as e:
            raise RepositoryError(f"OpenVINO cannot compile {model_file}: {ov_message(e)}") from e

    def _compile_cached(self, core: Any, spec: LoadSpec, config: dict[str, Any],
                        cache: CacheEntry) -> tuple[bool | None, str]:
        """Compile from the model's path through the cache entry: when the entry knows the model, with no
        read_model, its blob mapped instead of compiled. (whether the model is INT8, what happened), or
        (None, "") when the cache failed (a full disk...): the caller compiles without it."""
        quantized = None if cache.meta is None else bool(cache.meta.get("quantized"))
        if quantized is None:  # a new entry: read and check the model (its errors are the model's), note what it is
            quantized = is_quantized(core_model(core, spec))
        try:
            with cache.lock():
                before = cache.blobs()
                t0 = time.monotonic()
                self._compile(core, str(spec.model_file), {**config, "CACHE_DIR": str(cache.path)}, spec.model_file)
                reused = bool(before) and cache.blobs() == before
                if cache.meta is None:
                    cache.record({"quantized": quantized, "compile_s": round(time.monotonic() - t0, 3)})
                else:
                    cache.touch()
        except (RepositoryError, OSError) as e:
            logger.warning("compiled-model cache %s failed (%s): compiling without it", cache.path, e)
            self._compiled = self._queue = None
            return None, ""
        check_ports(spec, self._compiled.inputs, self._compiled.outputs)
        return quantized, (f"reused the compiled model in {cache.path}" if reused
                           else f"compiled and cached it in {cache.path}")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._queue is not None and len(batch) >= 2 * self.streams:
            return self._infer_split(batch)
        result = self._request.infer({0: batch}, share_inputs=True)
        # The request's output buffer is reused by the next batch: callers keep rows, so copy it out.
        return np.array(result[0], dtype=np.float32, copy=True)

    def _infer_split(self, batch: np.ndarray) -> np.ndarray:
        chunks = np.array_split(batch, self.streams)
        self._parts = [None] * len(chunks)
        for i, chunk in enumerate(chunks):
            self._queue.start_async({0: np.ascontiguousarray(chunk)}, userdata=i, share_inputs=True)
        self._queue.wait_all()
        if any(p is None for p in self._parts):
            raise RuntimeError("an OpenVINO stream returned no output")
        return np.concatenate(self._parts)  # type: ignore[arg-type]

    def _collect(self, request: Any, index: int) -> None:
        self._parts[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        warmup_sizes(self, batch_sizes, input_shape)

    def close(self) -> None:
        self._request = None
        self._queue = None
        self._compiled = None
