"""The one place a ServiceError becomes an HTTP response."""

from __future__ import annotations

import logging

from starlette.requests import Request

from service.api.responses import JSONResponse
from service.errors import ServiceError

logger = logging.getLogger("service.errors")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def render_error(request: Request, exc: ServiceError) -> JSONResponse:
    level = logging.ERROR if exc.status >= 500 and exc.status not in (503, 504) else logging.INFO
    logger.log(level, "%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.headers)
