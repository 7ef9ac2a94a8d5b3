"""One error hierarchy; each error carries its HTTP status and a machine code.

The repository format's own errors (``modelrepo.errors``, no HTTP notion) map onto it through
``as_service_error``. Both render as ``{"error": {"code", "message", "help"}}`` through
``service.http.error_render`` (KServe v2 routes: ``{"error": message}``, the v2 shape), ``help`` linking the
code's entry in ``service.error_catalogue`` (which every code here needs: its tests walk these classes).
Messages say what went wrong and how to fix it.
"""

from __future__ import annotations

import math

from modelrepo.errors import ImageError, ImageTooLarge, InvalidModelName, RepositoryError, VersionNotFound


class ServiceError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message  # what is answered, also after a caller made it more precise (an image's index)


class BadRequest(ServiceError):
    """400 for a malformed request (e.g. a KServe v2 inference request)."""

    status, code = 400, "bad_request"


class BadImage(ServiceError):
    status, code = 400, "bad_image"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    """403: a valid key without the role the route needs (a serving key on an admin route)."""

    status, code = 403, "forbidden"


class RequestTimeout(ServiceError):
    """408: the request body arrived slower than the minimum rate (``--body-min-rate``); the connection closes."""

    status, code = 408, "request_timeout"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class BadParameter(ServiceError):
    status, code = 422, "bad_parameter"


class ModelNotReady(ServiceError):
    status, code = 503, "model_not_ready"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class QueueFull(ServiceError):
    status, code = 503, "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class ServiceBusy(ServiceError):
    """503: accepting this request's body would pass the in-flight body budget (``--max-body-bytes-in-flight``)."""

    status, code = 503, "server_busy"


class RuntimeHung(ServiceError):
    """503: a batch ran past the watchdog (``--watchdog-s``); its runtime instance is retired as unhealthy."""

    status, code = 503, "runtime_unhealthy"

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class RateLimited(ServiceError):
    """429: the key (or client address) is over its token-bucket rate limit."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class EngineUnavailable(ServiceError):
    """503: the engine process this front end feeds is down or restarting (``--processes N``)."""

    status, code = 503, "engine_unavailable"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class RemoteError(ServiceError):
    """An error the engine process answered with, raised again in the front end with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status, self.code = status, code


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class InferenceFailed(ServiceError):
    status, code = 500, "inference_failed"


class ConfigError(ServiceError):
    """A setting that cannot work on this machine (e.g. --runtime openvino without OpenVINO): refused at start."""

    status, code = 500, "config_error"


class RepositoryFault(ServiceError):
    """500: a model folder or config.pbtxt that cannot be served as it is (``modelrepo.errors.RepositoryError``)."""

    status, code = 500, "repository_error"


#: what a handler may answer with: the service's errors, the repository format's and an image's
ANSWERABLE = (ServiceError, RepositoryError, ImageError)
Answerable = ServiceError | RepositoryError | ImageError


def as_service_error(exc: Answerable) -> ServiceError:
    """The service error answering ``exc``: a repository or image error gets its status here, the one map."""
    if isinstance(exc, ServiceError):
        return exc
    kind: type[ServiceError] = RepositoryFault
    if isinstance(exc, InvalidModelName):
        kind = BadParameter
    elif isinstance(exc, VersionNotFound):
        kind = ModelNotFound
    elif isinstance(exc, ImageTooLarge):
        kind = PayloadTooLarge
    elif isinstance(exc, ImageError):
        kind = BadImage
    err = kind(exc.message)
    err.__cause__ = exc
    return err


