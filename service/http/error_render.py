"""The one place an error becomes an HTTP answer: a ServiceError, or a repository error through
``as_service_error``. Under ``/v2`` the body is KServe's ``{"error": "<message>"}`` (what Triton clients
read); everywhere else the service's ``{"error": {"code", "message", "help"}}`` (the HTTP API reference). ``help`` is
the link to the code's entry in the error catalogue (``service.error_links.help_link``); the v2 message ends
with it instead, `` (see <link>)``, keeping KServe's shape. The connection guard, which answers before any
ASGI app runs, writes the same body through ``error_body``."""

from __future__ import annotations

import json
import logging

from starlette.types import Scope

from service.error_links import help_link, with_help
from service.errors import Answerable, as_service_error
from service.http.responses import JSONResponse

logger = logging.getLogger("service.errors")


def error_object(code: str, message: str) -> dict[str, str]:
    """The service's error object: machine code, message and the link to the code's catalogue entry."""
    return {"code": code, "message": message, "help": help_link(code)}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": error_object(code, message)}).encode()


def render_error(scope: Scope, error: Answerable, level: int | None = None) -> JSONResponse:
    """The answer to ``error`` for the request of ``scope``, logged (INFO for a client's mistake, ERROR for ours)."""
    exc = as_service_error(error)
    if level is None:
        level = logging.ERROR if exc.status >= 500 and exc.status not in (503, 504) else logging.INFO
    path = scope.get("path", "")
    logger.log(level, "%s %s -> %d %s: %s", scope.get("method", "-"), path, exc.status, exc.code, exc.message)
    if path.startswith("/v2"):
        return JSONResponse({"error": with_help(exc.message, exc.code)}, status_code=exc.status,
                            headers=exc.headers)
    return JSONResponse({"error": error_object(exc.code, exc.message)}, status_code=exc.status,
                        headers=exc.headers)
