"""KServe v2 / Open Inference Protocol over HTTP (docs/reference/kserve-v2.md), as Triton serves it.

JSON tensors and the binary-tensor extension (``Inference-Header-Content-Length``), Triton's
classification and model-repository extensions, so ``tritonclient.http`` and Triton's tools work
against this service. What a request may carry and what it answers is the codec's, the same as gRPC's
(``service.kserve.codec``): the preprocessed input tensor, or encoded images as BYTES. Each item goes
to the model's dynamic batcher, so v2 requests share batches with ``/classify`` traffic. Errors are
rendered as ``{"error": "<message>"}``, the shape Triton clients read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from google.protobuf.json_format import MessageToDict

from modelrepo.config import check_version
from service.engine.catalog import ServedModel
from service.engine.client import EngineClient
from service.errors import ANSWERABLE, BadRequest, ModelNotReady
from service.http import v2_wire
from service.http.deps import Client
from service.http.error_render import render_error
from service.http.responses import JSONResponse
from service.http.routes.classify import parse_timeout, read_body
from service.kserve import codec, repository
from service.kserve.metadata import EXTENSIONS, SERVER_NAME, io_metadata, server_version


class _V2Route(APIRoute):
    """Errors, FastAPI's validation errors too, rendered in the v2 shape (``service.http.error_render``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ANSWERABLE as e:
                return render_error(request.scope, e)
            except RequestValidationError as e:
                return render_error(request.scope, BadRequest(f"invalid request: {e.errors()}"))

        return v2_handler


router = APIRouter(prefix="/v2", route_class=_V2Route, tags=["v2"])


def _parse(body: bytes, header_len: int | None, model: ServedModel, max_items: int, max_bytes: int) -> codec.Checked:
    """Blocking (runs in the worker pool): the body -> a request checked against ``model``."""
    return codec.check(v2_wire.parse(body, header_len), model, max_items, max_bytes)


async def _get(client: EngineClient, name: str, version: str | None) -> ServedModel:
    """The version serving ``name`` (``version``: ASCII digits, else 404)."""
    return await client.model(name, check_version(version))


# -- health and metadata ---------------------------------------------------------------------
@router.get("")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})


@router.get("/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(client: Client) -> Response:
    ok, reason = client.readiness()
    if not ok:
        raise ModelNotReady(f"server not ready: {reason}")
    return Response(status_code=200)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(client: Client, name: str, version: str | None = None) -> Response:
    await _get(client, name, version)  # 404 unknown, 503 not ready
    return Response(status_code=200)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(client: Client, name: str, version: str | None = None) -> JSONResponse:
    inst = await _get(client, name, version)
    inp, out = io_metadata(inst)
    versions = [str(version)] if version else [str(v) for v in client.versions(inst.name)]
    return JSONResponse(
        {"name": inst.name, "versions": versions, "platform": inst.platform, "inputs": [inp], "outputs": [out]}
    )


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(client: Client, name: str, version: str | None = None) -> JSONResponse:
    inst = await _get(client, name, version)
    cfg = MessageToDict(inst.config, preserving_proto_field_name=True)
    for t in (*cfg.get("input", []), *cfg.get("output", [])):
        t["dims"] = [int(d) for d in t.get("dims", [])]  # protobuf JSON writes int64 as strings; Triton does not
    return JSONResponse(cfg)


# -- model repository extension (admin key) ---------------------------------------------------
@router.post("/repository/index")
async def repository_index(client: Client, request: Request) -> JSONResponse:
    """Every model of the repository with its state (``{"ready": true}``: only those serving)."""
    body = await read_body(request, 64 << 10)
    try:
        ready_only = bool(orjson.loads(body).get("ready", False)) if body.strip() else False
    except (orjson.JSONDecodeError, AttributeError) as e:
        raise BadRequest("repository index request must be a JSON object such as {\"ready\": true}") from e
    return JSONResponse([m for m in await repository.index(client) if m["state"] == "READY" or not ready_only])


@router.post("/repository/models/{name}/load")
async def repository_load(client: Client, name: str) -> Response:
    await client.load(name)
    return Response(status_code=200)


@router.post("/repository/models/{name}/unload")
async def repository_unload(client: Client, name: str) -> Response:
    await client.unload(name)
    return Response(status_code=200)


# -- inference -------------------------------------------------------------------------------
@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, client: Client, name: str, version: str | None = None) -> Response:
    """Parse (JSON + binary tensors, in the worker pool), one call to the codec, render."""
    settings = client.settings
    with client.track(name) as rec:
        limit = settings.max_upload_bytes
        body = v2_wire.decompress(await read_body(request, limit), request.headers.get("content-encoding", ""), limit)
        model = await _get(client, name, version)
        rec.served_by(model)
        hlen = v2_wire.header_length(request.headers.get(v2_wire.HEADER_LENGTH), len(body))
        checked = await asyncio.get_running_loop().run_in_executor(
            client.pool, _parse, body, hlen, model, settings.max_images_per_request, limit)
        deadline = rec.started + (checked.timeout_s or parse_timeout(request, model.default_timeout_s))
        out = await codec.infer(client, model, checked, deadline)
        head, raw = v2_wire.render(out, model.name, str(model.version), checked.id)
        if raw is None:
            return Response(head, media_type="application/json")
        return Response(head + raw, media_type="application/octet-stream",
                        headers={v2_wire.HEADER_LENGTH: str(len(head))})
