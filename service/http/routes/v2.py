"""KServe v2 / Open Inference Protocol over HTTP (DESIGN.md §2), as Triton serves it.

JSON tensors and the binary-tensor extension (``Inference-Header-Content-Length``), plus Triton's
classification extension, so ``tritonclient.http`` and Triton's tools work against this service.
The client sends the preprocessed ``input`` tensor FP32 [N, 3, H, W]; each of the N items goes to
the model's dynamic batcher, so v2 requests share batches with ``/classify`` traffic. Errors are
rendered as ``{"error": "<message>"}``, the shape Triton clients read.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import math
import struct
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import check_version
from service.engine.catalog import ServedModel
from service.errors import ANSWERABLE, BadRequest, ModelNotReady, PayloadTooLarge, as_service_error
from service.http.errors import render_error
from service.http.responses import JSONResponse
from service.http.routes.classify import parse_timeout, read_body
from service.http.routes.health import readiness

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "imgserve"
EXTENSIONS = ["classification", "binary_tensor_data"]


class _V2Route(APIRoute):
    """Errors, FastAPI's validation errors too, rendered in the v2 shape (``service.http.errors``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                await request.app.state.engine.sync()
                return await handler(request)
            except ANSWERABLE as e:
                return render_error(request.scope, e)
            except RequestValidationError as e:
                return render_error(request.scope, BadRequest(f"invalid request: {e.errors()}"))

        return v2_handler


router = APIRouter(prefix="/v2", route_class=_V2Route, tags=["v2"])


def _get(request: Request, name: str, version: str | None) -> ServedModel:
    """The version serving ``name`` (``version``: ASCII digits, else 404)."""
    return request.app.state.engine.model(name, check_version(version))


def _dtype(data_type: int) -> str:
    """ModelConfig ``TYPE_FP32`` -> protocol ``FP32`` (``TYPE_STRING`` is ``BYTES``)."""
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def io_metadata(inst: ServedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = inst.config
    inp, out = cfg.input[0], cfg.output[0]
    # Always a -1 batch dim: the service batches every model (max_batch_size 0 runs at batch 1).
    return (
        {"name": inp.name, "datatype": _dtype(inp.data_type), "shape": [-1, *map(int, inp.dims)]},
        {"name": out.name, "datatype": _dtype(out.data_type), "shape": [-1, *map(int, out.dims)]},
    )


# -- health and metadata ---------------------------------------------------------------------
@router.get("")
async def server_metadata() -> JSONResponse:
    try:
        version = importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return JSONResponse({"name": SERVER_NAME, "version": version, "extensions": EXTENSIONS})


@router.get("/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    ok, reason = readiness(request)
    if not ok:
        raise ModelNotReady(f"server not ready: {reason}")
    return Response(status_code=200)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    _get(request, name, version)  # 404 unknown, 503 not ready
    return Response(status_code=200)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
    inst = _get(request, name, version)
    inp, out = io_metadata(inst)
    versions = [str(version)] if version else [str(v) for v in request.app.state.engine.versions(inst.name)]
    return JSONResponse(
        {"name": inst.name, "versions": versions, "platform": inst.platform, "inputs": [inp], "outputs": [out]}
    )


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> JSONResponse:
    inst = _get(request, name, version)
    cfg = MessageToDict(inst.config, preserving_proto_field_name=True)
    for t in (*cfg.get("input", []), *cfg.get("output", [])):
        t["dims"] = [int(d) for d in t.get("dims", [])]  # protobuf JSON writes int64 as strings; Triton does not
    return JSONResponse(cfg)


# -- inference -------------------------------------------------------------------------------
@dataclass
class _Output:
    name: str
    binary: bool
    classes: int  # 0: raw logits; K > 0: Triton classification extension, top-K strings


@dataclass
class _Request:
    id: str | None
    batch: np.ndarray  # (N, 3, H, W) float32
    outputs: list[_Output]
    timeout_s: float | None


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"request body is not valid {encoding}: {e}") from e
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return out


def _parse(body: bytes, header_len: int | None, inst: ServedModel, max_items: int) -> _Request:
    """Blocking (runs in the worker pool): JSON header + binary tensors -> validated request."""
    spec, out_spec = io_metadata(inst)
    hlen = len(body) if header_len is None else header_len
    try:
        req = orjson.loads(body[:hlen])
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"inference request header is not valid JSON: {e}") from e
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise BadRequest("inference request must be a JSON object with an 'inputs' list")
    params = req.get("parameters") or {}
    if len(req["inputs"]) != 1 or not isinstance(req["inputs"][0], dict):
        raise BadRequest(f"model {inst.name!r} takes exactly one input, {spec['name']!r}; got {len(req['inputs'])}")
    tin = req["inputs"][0]
    want = f"{spec['name']!r} {spec['datatype']} {spec['shape']}"
    if tin.get("name") != spec["name"]:
        raise BadRequest(f"unexpected inference input {tin.get('name')!r} for model {inst.name!r}: expected {want}")
    if tin.get("datatype") != spec["datatype"]:
        raise BadRequest(f"input {spec['name']!r} has datatype {tin.get('datatype')!r}, expected {want}")
    shape = tin.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != len(spec["shape"])
        or not all(type(d) is int for d in shape)
        or shape[1:] != spec["shape"][1:]
        or shape[0] < 1
    ):
        raise BadRequest(f"input {spec['name']!r} has shape {shape}, expected {want} (batch >= 1)")
    if shape[0] > max_items:
        raise PayloadTooLarge(f"batch of {shape[0]} in one request, over the limit of {max_items}")
    count = math.prod(shape)
    size = (tin.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * 4:
            raise BadRequest(f"input {spec['name']!r}: binary_data_size {size} != {count * 4} bytes for shape {shape}")
        if len(body) - hlen != size:
            raise BadRequest(f"request carries {len(body) - hlen} bytes of binary data, input says {size}")
        batch = np.frombuffer(body, dtype="<f4", count=count, offset=hlen).reshape(shape)
    else:
        if "data" not in tin:
            raise BadRequest(f"input {spec['name']!r} has neither 'data' nor parameters.binary_data_size")
        if len(body) != hlen:
            raise BadRequest(f"{len(body) - hlen} bytes of binary data follow the header but no input is binary")
        try:
            batch = np.asarray(tin["data"], dtype=np.float32)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"input {spec['name']!r}: data is not a (nested) list of numbers: {e}") from e
        if batch.size != count:
            raise BadRequest(f"input {spec['name']!r}: {batch.size} values in data, shape {shape} needs {count}")
        batch = batch.reshape(shape)
    return _Request(req.get("id"), batch, _outputs(req, params, out_spec, inst), _timeout(params))


def _outputs(req: dict[str, Any], params: dict[str, Any], spec: dict[str, Any], inst: ServedModel) -> list[_Output]:
    default_binary = bool(params.get("binary_data_output", False))
    asked = req.get("outputs")
    if asked is None:
        return [_Output(spec["name"], default_binary, 0)]
    outs = []
    for o in asked if isinstance(asked, list) else [None]:
        if not isinstance(o, dict) or o.get("name") != spec["name"]:
            got = o.get("name") if isinstance(o, dict) else o
            raise BadRequest(f"unexpected inference output {got!r} for model {inst.name!r}: it has {spec['name']!r}")
        p = o.get("parameters") or {}
        k = p.get("classification", 0)
        if type(k) is not int or not 0 <= k <= len(inst.labels):
            raise BadRequest(f"output classification must be an integer 1..{len(inst.labels)}, got {k!r}")
        outs.append(_Output(spec["name"], bool(p.get("binary_data", default_binary)), k))
    return outs


def _timeout(params: dict[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter, in microseconds."""
    t = params.get("timeout")
    if t is None:
        return None
    if type(t) is not int or t <= 0:
        raise BadRequest(f"parameter timeout must be a positive number of microseconds, got {t!r}")
    return t / 1e6


def _encode(out: _Output, logits: np.ndarray, labels: list[str]) -> tuple[dict[str, Any], bytes | None]:
    """One output tensor: (JSON part, raw bytes when sent binary)."""
    if out.classes:
        top = np.argsort(-logits, axis=1, kind="stable")[:, : out.classes]
        strs = [f"{logits[n, i]:f}:{i}:{labels[i]}" for n in range(len(top)) for i in top[n]]
        tensor: dict[str, Any] = {"name": out.name, "datatype": "BYTES", "shape": [len(top), out.classes]}
        if not out.binary:
            return {**tensor, "data": strs}, None
        raw = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in strs))
    else:
        tensor = {"name": out.name, "datatype": "FP32", "shape": list(logits.shape)}
        if not out.binary:
            return {**tensor, "data": logits.ravel().tolist()}, None
        raw = logits.astype("<f4", copy=False).tobytes()
    return {**tensor, "parameters": {"binary_data_size": len(raw)}}, raw


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = request.app.state
    settings, metrics = state.settings, state.metrics
    started = time.monotonic()
    status, label_version, code = "500", "-", ""
    try:
        inst = _get(request, name, version)
        label_version = str(inst.version)
        limit = settings.max_upload_bytes
        body = _decompress(await read_body(request, limit), request.headers.get("content-encoding", ""), limit)
        inst = _get(request, name, version)  # the instance serving now: a reload may have swapped it meanwhile
        raw_hlen = request.headers.get(HEADER_LENGTH)
        if raw_hlen is not None and not (raw_hlen.isdigit() and int(raw_hlen) <= len(body)):
            raise BadRequest(f"{HEADER_LENGTH} {raw_hlen!r} is not a byte count within the {len(body)}-byte body")
        header_len = int(raw_hlen) if raw_hlen is not None else None
        loop = asyncio.get_running_loop()
        req = await loop.run_in_executor(state.pool, _parse, body, header_len, inst, settings.max_images_per_request)
        deadline = started + (req.timeout_s or parse_timeout(request, inst.default_timeout_s))
        logits = await state.engine.infer(inst, req.batch, deadline)
        metrics.child(metrics.images, inst.name, label_version).inc(len(logits))
        parts = [_encode(o, logits, inst.labels) for o in req.outputs]
        head: dict[str, Any] = {"model_name": inst.name, "model_version": label_version}
        if req.id is not None:
            head["id"] = req.id
        head["outputs"] = [p[0] for p in parts]
        header = orjson.dumps(head)
        status = "200"
        blobs = [p[1] for p in parts if p[1] is not None]
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            b"".join([header, *blobs]), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
        )
    except ANSWERABLE as e:
        err = as_service_error(e)
        status, code = str(err.status), err.code
        raise
    finally:
        known = request.app.state.engine.knows(name)
        metrics.request_done(name, label_version, status, time.monotonic() - started, known, code)
