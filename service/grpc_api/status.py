"""The one map from the service's errors to gRPC status codes (HTTP renders the same errors through
``service.http.error_render``). Retry advice travels in trailing metadata (``retry-after``, seconds), as the
machine code does (``imgserve-error-code``) and the link to its error-catalogue entry (``imgserve-error-help``,
also at the end of the message). ``service.error_catalogue`` lists each code's status from ``grpc_code``."""

from __future__ import annotations

import grpc

from service.error_links import help_link, with_help
from service.errors import Answerable, as_service_error

#: machine codes whose 503/429 mean "too much now": RESOURCE_EXHAUSTED (retry later), not UNAVAILABLE
_EXHAUSTED = {"queue_full", "rate_limited", "server_busy", "payload_too_large"}
_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int, code: str) -> grpc.StatusCode:
    """The gRPC status of a service error with this HTTP status and machine code."""
    if code in _EXHAUSTED:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _BY_STATUS.get(http_status, grpc.StatusCode.INTERNAL)


def grpc_status(error: Answerable) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(status code, message, trailing metadata) answering ``error``."""
    err = as_service_error(error)
    trailing = [("imgserve-error-code", err.code), ("imgserve-error-help", help_link(err.code))]
    if "Retry-After" in err.headers:
        trailing.append(("retry-after", err.headers["Retry-After"]))
    return grpc_code(err.status, err.code), with_help(err.message, err.code), tuple(trailing)

