"""The one place an error becomes an HTTP answer: a ServiceError, or a repository error through
``as_service_error``. Under ``/v2`` the body is KServe's ``{"error": "<message>"}`` (what Triton clients
read); everywhere else the service's ``{"error": {"code", "message"}}`` (DESIGN.md §2). The connection
guard, which answers before any ASGI app runs, writes the same body through ``error_body``."""

from __future__ import annotations

import json
import logging

from starlette.types import Scope

from service.errors import Answerable, as_service_error
from service.http.responses import JSONResponse

logger = logging.getLogger("service.errors")


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def render_error(scope: Scope, error: Answerable, level: int | None = None) -> JSONResponse:
    """The answer to ``error`` for the request of ``scope``, logged (INFO for a client's mistake, ERROR for ours)."""
    exc = as_service_error(error)
    if level is None:
        level = logging.ERROR if exc.status >= 500 and exc.status not in (503, 504) else logging.INFO
    path = scope.get("path", "")
    logger.log(level, "%s %s -> %d %s: %s", scope.get("method", "-"), path, exc.status, exc.code, exc.message)
    if path.startswith("/v2"):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status,
                        headers=exc.headers)
