"""POST /classify (docs/reference/http-api.md)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from modelrepo.config import check_version
from service.advice import random_weights_warning
from service.engine.catalog import ServedModel
from service.engine.client import Answer, EngineClient
from service.errors import ANSWERABLE, BadParameter, BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.http.deps import app_settings, engine_client
from service.http.error_render import render_error
from service.http.responses import JSONResponse

RAW_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/gif", "application/octet-stream"}


@dataclass
class Upload:
    filename: str | None
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body is {declared} bytes, over the limit of {limit}: send smaller or fewer images"
        )
    # One growing buffer, not a list of 64 KiB chunks: a large buffer is its own mapping, handed back to
    # the OS when freed, where thousands of small chunks would leave the heap fragmented after a burst.
    buf = bytearray()
    async for chunk in request.stream():
        if len(buf) + len(chunk) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes: send smaller or fewer images")
        buf += chunk
    return bytes(buf)


async def read_uploads(request: Request, max_bytes: int, max_images: int) -> list[Upload]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and ctype not in RAW_TYPES:  # refused before reading the body
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype or '(none)'!r}: send multipart/form-data with 'file' parts, "
            "or a raw body as image/jpeg, image/png, image/webp, image/bmp, image/gif or application/octet-stream"
        )
    body = await read_body(request, max_bytes)
    if ctype != "multipart/form-data":
        return [Upload(None, body)]
    try:
        form = await _replayed(request, body).form(max_files=max_images + 1, max_fields=max_images + 16)
    except Exception as e:  # starlette raises HTTPException / MultiPartException on bad input
        raise BadRequest(f"malformed multipart body: {getattr(e, 'detail', e)}") from e
    try:
        parts = form.getlist("file")
        if not parts:
            raise BadParameter("multipart body has no part named 'file': send images as file=@image.jpg")
        if len(parts) > max_images:
            raise PayloadTooLarge(f"{len(parts)} images in one request, over the limit of {max_images}")
        uploads = []
        for i, p in enumerate(parts):
            if not isinstance(p, UploadFile):
                raise BadParameter(f"part {i} named 'file' is a text field, not a file upload")
            uploads.append(Upload(p.filename, await p.read()))
        return uploads
    finally:
        await form.close()


def _replayed(request: Request, body: bytes) -> Request:
    """The request again, its (already size-checked) body replayed from memory for the form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def parse_timeout(request: Request, default_s: float) -> float:
    raw = request.headers.get("x-request-timeout-ms")
    if raw is None:
        return default_s
    try:
        ms = float(raw)
    except ValueError:
        ms = -1
    if not ms > 0:
        raise BadParameter(f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {raw!r}")
    return ms / 1000


def parse_query(request: Request) -> tuple[str | None, str | None, int]:
    """``model``, ``version`` and ``top_k`` from the query string, with clear 422s."""
    q = request.query_params
    unknown = set(q) - {"model", "version", "top_k"}
    if unknown:
        raise BadParameter(f"unknown query parameter(s) {', '.join(sorted(unknown))}: use model, version, top_k")
    raw_k = q.get("top_k", "5")
    try:
        top_k = int(raw_k)
    except ValueError:
        top_k = 0
    if top_k < 1:
        raise BadParameter(f"top_k must be an integer >= 1 (at most the number of classes), got {raw_k!r}")
    return q.get("model") or None, check_version(q.get("version")), top_k


async def classify(request: Request) -> Response:
    """POST /classify. A plain Starlette endpoint: FastAPI's dependency solving cost as much CPU per
    request as the handler itself, and this is the hot path. Parse, one call to the engine client, render."""
    client, settings = engine_client(request), app_settings(request)
    with client.track("_unknown") as rec:
        try:
            model, version, top_k = parse_query(request)
            rec.name = model or rec.name
            uploads = await read_uploads(request, settings.max_upload_bytes, settings.max_images_per_request)
            served = await client.model(model, version)
            rec.served_by(served)
            if top_k > len(served.labels):
                raise BadParameter(f"top_k={top_k} is more than the model's {len(served.labels)} classes")
            deadline = rec.started + parse_timeout(request, served.default_timeout_s)
            answer = await client.classify(served, [u.data for u in uploads], top_k, deadline,
                                           [u.filename for u in uploads])
            return _render(client, served, uploads, answer)
        except ANSWERABLE as e:
            rec.failed(e)
            return render_error(request.scope, e)


#: documented in the OpenAPI schema by hand since the route is not a FastAPI route
OPENAPI = {
    "post": {
        "summary": "Classify one or more images",
        "description": "Raw image body (image/jpeg, png, webp, bmp, gif, application/octet-stream) or "
        "multipart/form-data with one or more parts named `file`.",
        "parameters": [
            {"name": "model", "in": "query", "schema": {"type": "string"}, "description": "model name"},
            {"name": "version", "in": "query", "schema": {"type": "string"}, "description": "default: latest"},
            {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 5}},
            {"name": "X-Request-Timeout-Ms", "in": "header", "schema": {"type": "number"}},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one or more images, each a part named `file`"}}},
                },
                **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(RAW_TYPES)},
            },
        },
        "responses": {
            "200": {"description": "predictions per image, in the order sent", "content": {"application/json": {
                "schema": {"type": "object", "required": ["model", "version", "results"], "properties": {
                    "model": {"type": "string"}, "version": {"type": "string"},
                    "warning": {"type": "string", "description": "present when the model has random weights"},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "filename": {"type": ["string", "null"]},
                        "predictions": {"type": "array", "items": {"type": "object", "properties": {
                            "index": {"type": "integer"}, "label": {"type": "string"},
                            "score": {"type": "number", "description": "softmax probability"}}}}}}}}}}}},
            **{
                code: {"description": what, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorResponse"}}}}
                for code, what in {
                    "400": "undecodable, truncated or empty image (the message names the bad part)",
                    "401": "missing or wrong API key", "404": "unknown model or version",
                    "413": "body, image pixels or number of images over the limit",
                    "415": "unsupported Content-Type", "422": "bad query parameter or header",
                    "429": "over the API key's (or client's) rate limit (Retry-After)",
                    "503": "model not ready, queue full or deadline cannot be met (Retry-After)",
                    "504": "deadline passed while queued",
                }.items()
            },
        },
    }
}

#: the one error shape every route answers with (docs/reference/http-api.md)
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string", "description": "machine code, e.g. bad_image"},
                   "message": {"type": "string", "description": "what went wrong and how to fix it"},
                   "help": {"type": "string", "description": "the code's entry in the error catalogue (a link)"}}}}}


def _render(client: EngineClient, served: ServedModel, uploads: list[Upload], answer: Answer) -> JSONResponse:
    body = {
        "model": served.name,
        "version": str(served.version),
        "results": [{"filename": u.filename, "predictions": r} for u, r in zip(uploads, answer.rows, strict=True)],
    }
    if served.weights == "random":  # only then are the other models' weights needed (not on every request)
        warning = random_weights_warning(served.name, {**client.weights(), served.name: "random"})
        if warning is not None:
            body["warning"] = warning
    timing = (f"queue;dur={answer.queue_s * 1000:.2f}, preprocess;dur={answer.preprocess_s * 1000:.2f}, "
              f"infer;dur={answer.compute_s * 1000:.2f}")
    return JSONResponse(body, headers={"Server-Timing": timing})
