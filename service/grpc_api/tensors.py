"""KServe v2 / Triton gRPC tensors <-> what the engine takes, with the checks of the HTTP v2 route.

An inference request carries one input: the model's, as FP32 or FP16 (typed ``contents`` or
``raw_input_contents``), or as BYTES holding one encoded image per batch row (``[N]`` or ``[N, 1]``),
which the service decodes and preprocesses exactly as ``/classify`` does. Outputs: the logits as FP32,
or, with the ``classification`` parameter (Triton's classification extension), a BYTES tensor of
``"score:index:label"`` strings per row, best first. Every mistake is a ``BadRequest`` (400, rendered
INVALID_ARGUMENT) naming what was expected; nothing here can raise anything else for a client's bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.engine.catalog import Predictions, ServedModel
from service.errors import BadRequest, PayloadTooLarge

#: images per row when no classification parameter says otherwise (as /classify's default top_k)
DEFAULT_TOP_K = 5
_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}


@dataclass
class Parsed:
    """A validated request: a float32 batch, or encoded images; what to answer with."""

    batch: np.ndarray | None
    images: list[bytes] | None
    #: 0: the logits as FP32; k > 0: the top-k classification strings
    classes: int
    output_name: str
    timeout_s: float | None


def _param(params: Any, key: str) -> int | None:
    p = params.get(key)
    if p is None:
        return None
    kind = p.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise BadRequest(f"parameter {key} must be an integer, got {kind or 'nothing'}")
    return int(getattr(p, kind))


def _bytes_elements(raw: bytes, count: int, what: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise BadRequest(f"{what}: element {i} of {count} is missing (the raw contents end after {pos} bytes)")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"{what}: element {i} says {n} bytes but only {len(raw) - pos} follow")
        out.append(raw[pos:pos + n])
        pos += n
    if pos != len(raw):
        raise BadRequest(f"{what}: {len(raw) - pos} bytes left over after {count} elements")
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def parse(req: pb.ModelInferRequest, model: ServedModel, max_items: int, max_pixels_bytes: int) -> Parsed:
    inp_cfg = model.config.input[0]
    want_name, want_dims = inp_cfg.name, [int(d) for d in inp_cfg.dims]
    if len(req.inputs) != 1:
        raise BadRequest(f"model {model.name!r} takes exactly one input, {want_name!r}; got {len(req.inputs)}")
    tin = req.inputs[0]
    if tin.name != want_name:
        raise BadRequest(f"unexpected input {tin.name!r} for model {model.name!r}: expected {want_name!r} "
                         f"(FP32/FP16 {[-1, *want_dims]}, or BYTES [N] of encoded images)")
    raw = req.raw_input_contents
    if len(raw) > 1:
        raise BadRequest(f"{len(raw)} raw_input_contents for one input")
    if raw and tin.HasField("contents"):
        raise BadRequest(f"input {want_name!r} has both contents and raw_input_contents: send one")
    shape = list(tin.shape)
    if not shape or shape[0] < 1 or any(d < 1 for d in shape):
        raise BadRequest(f"input {want_name!r} has shape {shape}: every dimension must be >= 1")
    if shape[0] > max_items:
        raise PayloadTooLarge(f"batch of {shape[0]} in one request, over the limit of {max_items}")
    classes, out_name = _outputs(req, model)
    timeout_us = _param(req.parameters, "timeout")
    if timeout_us is not None and timeout_us <= 0:
        raise BadRequest(f"parameter timeout must be a positive number of microseconds, got {timeout_us}")
    timeout_s = timeout_us / 1e6 if timeout_us else None
    if tin.datatype == "BYTES":
        if shape not in ([shape[0]], [shape[0], 1]):
            raise BadRequest(f"BYTES input {want_name!r} holds one encoded image per row: shape [N] or [N, 1], "
                             f"got {shape}")
        if raw:
            images = _bytes_elements(raw[0], shape[0], f"input {want_name!r}")
        else:
            images = list(tin.contents.bytes_contents)
            if len(images) != shape[0]:
                raise BadRequest(f"input {want_name!r}: {len(images)} bytes_contents for shape {shape}")
        if sum(len(i) for i in images) > max_pixels_bytes:
            raise PayloadTooLarge(f"images of {sum(len(i) for i in images)} bytes, over the limit of "
                                  f"{max_pixels_bytes}")
        return Parsed(None, images, classes or DEFAULT_TOP_K, out_name, timeout_s)
    if tin.datatype not in _DTYPES:
        raise BadRequest(f"input {want_name!r} has datatype {tin.datatype!r}: send FP32, FP16 or BYTES (images)")
    if shape[1:] != want_dims:
        raise BadRequest(f"input {want_name!r} has shape {shape}, expected {[-1, *want_dims]}")
    count = math.prod(shape)
    dt = _DTYPES[tin.datatype]
    if raw:
        if len(raw[0]) != count * dt.itemsize:
            raise BadRequest(f"input {want_name!r}: raw_input_contents holds {len(raw[0])} bytes, shape {shape} "
                             f"of {tin.datatype} needs {count * dt.itemsize}")
        batch = np.frombuffer(raw[0], dtype=dt).reshape(shape)
    else:
        if tin.datatype != "FP32":
            raise BadRequest(f"input {want_name!r}: {tin.datatype} travels in raw_input_contents only")
        values = tin.contents.fp32_contents
        if len(values) != count:
            raise BadRequest(f"input {want_name!r}: {len(values)} fp32_contents, shape {shape} needs {count}")
        batch = np.asarray(values, dtype=np.float32).reshape(shape)
    return Parsed(batch.astype(np.float32, copy=False), None, classes, out_name, timeout_s)


def _outputs(req: pb.ModelInferRequest, model: ServedModel) -> tuple[int, str]:
    out_name = model.config.output[0].name if model.config.output else "logits"
    if len(req.outputs) > 1:
        raise BadRequest(f"model {model.name!r} has one output, {out_name!r}; {len(req.outputs)} were requested")
    if not req.outputs:
        return 0, out_name
    o = req.outputs[0]
    if o.name != out_name:
        raise BadRequest(f"unexpected output {o.name!r} for model {model.name!r}: it has {out_name!r}")
    k = _param(o.parameters, "classification") or 0
    if not 0 <= k <= len(model.labels):
        raise BadRequest(f"output classification must be an integer 1..{len(model.labels)}, got {k}")
    return k, out_name


def logits_response(model: ServedModel, req: pb.ModelInferRequest, name: str, logits: np.ndarray,
                    classes: int) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=req.id)
    out = resp.outputs.add(name=name)
    if classes:
        top = np.argsort(-logits, axis=1, kind="stable")[:, :classes]
        strs = [f"{logits[n, i]:f}:{i}:{model.labels[i]}".encode() for n in range(len(top)) for i in top[n]]
        out.datatype, out.shape[:] = "BYTES", [len(top), classes]
        resp.raw_output_contents.append(encode_bytes(strs))
    else:
        out.datatype, out.shape[:] = "FP32", list(logits.shape)
        resp.raw_output_contents.append(logits.astype("<f4", copy=False).tobytes())
    return resp


def predictions_response(model: ServedModel, req: pb.ModelInferRequest, name: str,
                         rows: list[Predictions]) -> pb.ModelInferResponse:
    """JPEG-bytes input: the top-k softmax probabilities of each image, as ``"score:index:label"``."""
    resp = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=req.id)
    k = len(rows[0]) if rows else 0
    out = resp.outputs.add(name=name, datatype="BYTES")
    out.shape[:] = [len(rows), k]
    strs = [f"{p['score']:f}:{p['index']}:{p['label']}".encode() for row in rows for p in row]
    resp.raw_output_contents.append(encode_bytes(strs))
    return resp
