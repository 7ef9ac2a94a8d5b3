"""One KServe v2 inference codec for HTTP and gRPC: validation, tensor and BYTES decoding, the
classification extension, the request parameters, and the run through the engine client.

A protocol turns its wire format into a ``Request`` (``service.http.routes.v2``: JSON + the binary
tensor extension; ``service.grpc_api.tensors``: protobuf), calls ``infer`` and writes the ``Output``
back. So both take the same inputs and give the same answers:

- the model's input as FP32 or FP16 ``[N, C, H, W]`` (FP16 in binary form only), run as given;
- or BYTES ``[N]`` / ``[N, 1]``, one encoded image per row, decoded and preprocessed as ``/classify``
  does (in binary form: Triton's 4-byte length before each element);
- the output as FP32 logits, or with the ``classification`` parameter (Triton's classification
  extension) the top-k as BYTES ``"score:index:label"``, best first, where the score is the softmax
  probability, the same number ``/classify`` answers (``service.engine.scores``). An image input
  without the parameter answers its top ``DEFAULT_TOP_K``;
- the ``timeout`` parameter (microseconds) as the request's deadline.

Every mistake is a ``BadRequest`` (400 / INVALID_ARGUMENT) or ``PayloadTooLarge`` naming what was expected.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.catalog import ServedModel
from service.engine.client import EngineClient
from service.engine.scores import Predictions, predictions
from service.errors import BadRequest, PayloadTooLarge
from service.kserve.metadata import io_metadata

#: classes per image row when no classification parameter says otherwise (as /classify's default top_k)
DEFAULT_TOP_K = 5
_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}


@dataclass
class Tensor:
    """One input tensor as a protocol carries it, not yet checked (HTTP's JSON may hold anything)."""

    name: Any
    datatype: Any
    shape: Any
    #: its contents in binary form (HTTP's binary extension, gRPC's raw_input_contents), if sent so: a view
    #: into the request body, never a copy of it
    raw: bytes | memoryview | None = None
    #: its contents as typed values (HTTP's JSON ``data``; gRPC's fp32_contents or bytes_contents)
    values: Any = None


@dataclass
class OutputSpec:
    """An output asked for: binary (HTTP's extension; gRPC is always binary), and the top-k asked (0: the
    logits; as sent until ``check`` validates it)."""

    name: str
    binary: bool = False
    classes: Any = 0


@dataclass
class Request:
    id: str | None
    inputs: list[Tensor]
    #: None: the model's output, as logits (or an image input's top DEFAULT_TOP_K)
    outputs: list[OutputSpec] | None
    timeout_s: float | None
    #: the model's output in binary form when ``outputs`` is None (HTTP's ``binary_data_output``)
    binary_output: bool = False


@dataclass
class Checked:
    """A valid request: a float32 batch or encoded images, and the one output to answer."""

    batch: np.ndarray | None
    images: list[bytes] | None
    output: OutputSpec
    timeout_s: float | None
    id: str | None = None


@dataclass
class Output:
    """The answer's tensor: FP32 logits (``array``) or BYTES classification strings (``strings``)."""

    name: str
    datatype: str
    shape: list[int]
    binary: bool
    array: np.ndarray | None = None
    strings: list[bytes] | None = None

    def raw(self) -> bytes:
        if self.strings is not None:
            return encode_bytes(self.strings)
        assert self.array is not None
        return self.array.astype("<f4", copy=False).tobytes()


def bytes_elements(raw: bytes | memoryview, count: int, what: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise BadRequest(f"{what}: element {i} of {count} is missing (the binary contents end after {pos} bytes)")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"{what}: element {i} says {n} bytes but only {len(raw) - pos} follow")
        out.append(bytes(raw[pos:pos + n]))
        pos += n
    if pos != len(raw):
        raise BadRequest(f"{what}: {len(raw) - pos} bytes left over after {count} elements")
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def timeout_param(value: Any) -> float | None:
    """The ``timeout`` request parameter (microseconds) in seconds."""
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise BadRequest(f"parameter timeout must be a positive number of microseconds, got {value!r}")
    return value / 1e6


def classes_param(value: Any, model: ServedModel) -> int:
    """The output's ``classification`` parameter: how many classes to answer (0: the logits)."""
    k = 0 if value is None else value
    if type(k) is not int or not 0 <= k <= len(model.labels):
        raise BadRequest(f"output classification must be an integer 1..{len(model.labels)}, got {k!r}")
    return k


def check(req: Request, model: ServedModel, max_items: int, max_image_bytes: int) -> Checked:
    """``req`` validated against ``model``'s input and output (blocking: run it in the worker pool)."""
    spec, out_spec = io_metadata(model)
    want = f"{spec['name']!r} ({spec['datatype']} {spec['shape']}, or BYTES [N] of encoded images)"
    if len(req.inputs) != 1:
        raise BadRequest(f"model {model.name!r} takes exactly one input, {want}; got {len(req.inputs)}")
    t = req.inputs[0]
    if t.name != spec["name"]:
        raise BadRequest(f"unexpected inference input {t.name!r} for model {model.name!r}: expected {want}")
    shape = t.shape
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 1 for d in shape):
        raise BadRequest(f"input {t.name!r} has shape {shape}: every dimension must be an integer >= 1")
    if shape[0] > max_items:
        raise PayloadTooLarge(f"batch of {shape[0]} in one request, over the limit of {max_items}")
    output = _output(req.outputs, out_spec["name"], model, req.binary_output)
    if t.datatype == "BYTES":
        images = _images(t, shape, max_image_bytes)
        if not output.classes:
            output.classes = min(DEFAULT_TOP_K, len(model.labels))
        return Checked(None, images, output, req.timeout_s, req.id)
    if t.datatype not in _DTYPES:
        raise BadRequest(f"input {t.name!r} has datatype {t.datatype!r}: send FP32, FP16 or BYTES (encoded images)")
    if shape[1:] != spec["shape"][1:]:
        raise BadRequest(f"input {t.name!r} has shape {shape}, expected {spec['shape']} (batch >= 1)")
    return Checked(_floats(t, shape), None, output, req.timeout_s, req.id)


def _output(asked: list[OutputSpec] | None, name: str, model: ServedModel, binary: bool) -> OutputSpec:
    if not asked:
        return OutputSpec(name, binary)
    if len(asked) > 1:
        raise BadRequest(f"model {model.name!r} has one output, {name!r}; {len(asked)} were requested")
    if asked[0].name != name:
        raise BadRequest(f"unexpected inference output {asked[0].name!r} for model {model.name!r}: it has {name!r}")
    return OutputSpec(name, asked[0].binary, classes_param(asked[0].classes, model))


def _images(t: Tensor, shape: list[int], max_bytes: int) -> list[bytes]:
    if shape not in ([shape[0]], [shape[0], 1]):
        raise BadRequest(f"BYTES input {t.name!r} holds one encoded image per row: shape [N] or [N, 1], got {shape}")
    if t.raw is not None:
        images = bytes_elements(t.raw, shape[0], f"input {t.name!r}")
    elif isinstance(t.values, list) and all(isinstance(v, bytes) for v in t.values):
        images = list(t.values)
    else:
        raise BadRequest(f"input {t.name!r}: encoded images travel in binary form (HTTP: the binary tensor "
                         "extension, e.g. tritonclient's set_data_from_numpy(..., binary_data=True); gRPC: "
                         "raw_input_contents or bytes_contents), not as JSON strings")
    if len(images) != shape[0]:
        raise BadRequest(f"input {t.name!r}: {len(images)} images for shape {shape}")
    total = sum(len(i) for i in images)
    if total > max_bytes:
        raise PayloadTooLarge(f"images of {total} bytes, over the limit of {max_bytes}")
    return images


def _floats(t: Tensor, shape: list[int]) -> np.ndarray:
    count, dt = math.prod(shape), _DTYPES[t.datatype]
    if t.raw is not None:
        if len(t.raw) != count * dt.itemsize:
            raise BadRequest(f"input {t.name!r}: the binary contents hold {len(t.raw)} bytes, shape {shape} of "
                             f"{t.datatype} needs {count * dt.itemsize}")
        return np.frombuffer(t.raw, dtype=dt).reshape(shape).astype(np.float32, copy=False)
    if t.values is None:
        raise BadRequest(f"input {t.name!r} has no contents: send 'data' (or binary contents)")
    if t.datatype != "FP32":
        raise BadRequest(f"input {t.name!r}: {t.datatype} travels in binary form only")
    try:
        batch = np.asarray(t.values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"input {t.name!r}: its data is not a (nested) list of numbers: {e}") from e
    if batch.size != count:
        raise BadRequest(f"input {t.name!r}: {batch.size} values in its data, shape {shape} needs {count}")
    return batch.reshape(shape)


def classification(rows: list[Predictions]) -> list[bytes]:
    """Triton's classification strings, ``"score:index:label"`` per class, row after row."""
    return [f"{p['score']:f}:{p['index']}:{p['label']}".encode() for row in rows for p in row]


async def infer(client: EngineClient, model: ServedModel, req: Checked, deadline: float) -> Output:
    """Run a checked request through the engine client and answer its output tensor."""
    out = req.output
    if req.images is not None:
        rows = (await client.classify(model, req.images, out.classes, deadline)).rows
    else:
        assert req.batch is not None
        logits = await client.infer(model, req.batch, deadline)
        if not out.classes:
            return Output(out.name, "FP32", list(logits.shape), out.binary, array=logits)
        rows = predictions(list(logits), out.classes, model.labels)
    return Output(out.name, "BYTES", [len(rows), out.classes], out.binary, strings=classification(rows))
