"""create_app(settings) -> FastAPI. Nothing happens at import; the lifespan starts and stops the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelrepo.errors import ImageError, RepositoryError
from service.access import AccessControl
from service.config import Settings
from service.engine.client import EngineClient
from service.error_links import configure_docs_url
from service.errors import Answerable, BadParameter, RateLimited, ServiceError
from service.http.body_guard import BodyBudget, BodyGuard
from service.http.error_render import render_error
from service.http.openapi_access import document_access
from service.http.responses import JSONResponse
from service.http.routes import classify, health, models, v2
from service.logging import request_id
from service.metrics import Metrics

logger = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"
#: Swagger UI and ReDoc assets shipped by the fastapi-offline package, so /docs works with no CDN
_DOCS_STATIC = Path(fastapi_offline.__file__).parent / "static"
#: the pages fetch from this service only (ReDoc would otherwise load its logo from cdn.redoc.ly)
_CSP = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'"
}


class RequestContext:
    """Pure ASGI middleware: request id (echoed or made), access control (service.access), in-flight gauge."""

    def __init__(self, app: ASGIApp, access: AccessControl, metrics: Metrics) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)

        engine: EngineClient | None = scope["app"].state.client if "app" in scope else None

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-request-id", rid.encode("latin-1"))]
                if engine is not None and engine.draining:
                    # while draining, clients open a new connection per request: when the listener closes,
                    # no idle keep-alive connection is left to carry a request that would be cut off
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            client = scope.get("client")
            refused = await self.access.check(scope["method"], scope["path"], headers, client[0] if client else "-")
            if refused is not None:
                await _refusal(scope, refused)(scope, receive, send_with_id)
                return
            self.metrics.inflight.inc()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.metrics.inflight.dec()
        finally:
            request_id.reset(token)


def _refusal(scope: Scope, exc: ServiceError) -> JSONResponse:
    """401/403/429 before routing (a flood of 429s logs at DEBUG)."""
    return render_error(scope, exc, logging.DEBUG if isinstance(exc, RateLimited) else logging.INFO)


def _lifespan(client: EngineClient, access: AccessControl) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = client.settings
        logger.info("access control: %s", access.describe())
        undo_sighup = access.keys.install_sighup()
        loader = asyncio.get_running_loop().create_task(client.start())
        if settings.processes > 1:
            # A front end of --processes N joins the shared port (uvicorn listens after this startup) only
            # once the engine has loaded the models: the kernel never hands a connection to one that could
            # only answer 503 while others serve.
            await asyncio.shield(loader)
        grpc = None
        if settings.grpc_port:
            from service.grpc_api.grpc_server import GrpcServer

            grpc = app.state.grpc = GrpcServer(client, access)
            await grpc.start()
        try:
            yield
        finally:
            if undo_sighup is not None:
                undo_sighup()
            client.draining = True
            if grpc is not None:
                await grpc.close(settings.graceful_timeout_s)
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await client.close()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    @app.exception_handler(RepositoryError)
    @app.exception_handler(ImageError)
    async def _service_error(request: Request, exc: Answerable) -> JSONResponse:
        return render_error(request.scope, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
            msgs.append(f"{where}: {err.get('msg')}")
        return render_error(request.scope, BadParameter("; ".join(msgs) or "invalid request"))


def _add_routes(app: FastAPI) -> None:
    app.router.add_route("/classify", classify.classify, methods=["POST"], include_in_schema=False)
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = fastapi_openapi()  # cached by FastAPI after the first call
        schema["paths"].setdefault("/classify", classify.OPENAPI)
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = classify.ERROR_SCHEMA
        document_access(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(v2.router)
    _add_pages(app)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_docs_url(settings.docs_url)  # error answers (HTTP, gRPC, connection guard) link to the catalogue
    access = AccessControl(settings)  # a missing or malformed --api-keys-file fails here, at start
    metrics = Metrics()
    client = EngineClient(settings, metrics)
    app = FastAPI(
        title="imgserve",
        summary="Image classification with dynamic batching over OpenVINO / ONNX Runtime / TensorRT",
        lifespan=_lifespan(client, access),
        default_response_class=JSONResponse,
        docs_url=None,
        redoc_url=None,
    )
    # what service.http.deps hands the routes, and the server its drain
    app.state.settings = settings
    app.state.client = client
    app.state.access = access
    app.state.grpc = None
    _add_error_handlers(app)
    _add_routes(app)
    # inside RequestContext: a request refused by access control never reserves body bytes
    app.add_middleware(BodyGuard, budget=BodyBudget(settings.max_body_bytes_in_flight),
                       min_rate=settings.body_min_rate, grace_s=settings.body_timeout_s,
                       max_body=settings.max_upload_bytes, metrics=metrics)
    app.add_middleware(RequestContext, access=access, metrics=metrics)
    if settings.cors_origins:  # outermost: preflights need no key, and 401/429 answers carry the CORS headers
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "X-Request-Timeout-Ms"],
            expose_headers=["X-Request-ID", "Server-Timing", "Retry-After"],
        )
    return app


def _add_pages(app: FastAPI) -> None:
    """The page at / (service/static) and offline /docs and /redoc: no CDN, nothing fetched elsewhere."""
    app.mount("/static/docs", StaticFiles(directory=_DOCS_STATIC), name="docs-static")
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(_STATIC / "index.html", headers={"Cache-Control": "no-cache", **_CSP})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(_DOCS_STATIC / "favicon.png")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return _with_csp(get_swagger_ui_html(
            openapi_url="/openapi.json", title="imgserve - Swagger UI",
            swagger_js_url="/static/docs/swagger-ui-bundle.js", swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
        ))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _with_csp(get_redoc_html(
            openapi_url="/openapi.json", title="imgserve - ReDoc", redoc_js_url="/static/docs/redoc.standalone.js",
            redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False,
        ))


def _with_csp(resp: HTMLResponse) -> HTMLResponse:
    resp.headers.update(_CSP)
    return resp
