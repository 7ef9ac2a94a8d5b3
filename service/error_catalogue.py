"""The error catalogue: every machine error code the service answers with, its HTTP status, its gRPC status
(from ``service.grpc_api.status``, the map the gRPC server uses) and what to do about it.

The codes come from the error classes themselves (``service.errors``), so an error added without catalogue
text fails ``entries()`` (and the tests). ``render_markdown()`` is the body of the documentation page
``docs/reference/errors.md``: one ``## <code>`` section per code, whose anchor ``#<code>`` is where each
error answer's ``help`` link points (``service.error_links.help_link``).
"""

from __future__ import annotations

from dataclasses import dataclass

from service import errors
from service.error_links import help_link
from service.grpc_api.status import grpc_code


@dataclass(frozen=True)
class CatalogueEntry:
    code: str  #: machine code, ``error.code`` in the answer
    http_status: int
    grpc_status: str  #: gRPC status code name, e.g. NOT_FOUND
    title: str  #: what happened, in a few words
    action: str  #: what the caller (or the operator) does about it
    error_class: str  #: the class in ``service.errors`` that answers with it


#: code -> (title, what to do). Every concrete error code needs its entry here.
_TEXT: dict[str, tuple[str, str]] = {
    "bad_request": ("Malformed request", "The request does not follow the protocol (for example a KServe v2 "
                    "inference request with a missing or mistyped field). Fix the request as the message says; "
                    "retrying it unchanged fails the same way."),
    "bad_image": ("Image cannot be decoded", "Send a JPEG, PNG, WebP, BMP or GIF file that opens in an image "
                  "viewer; the message names the image (its index and file name) in a multi-image request."),
    "unauthorized": ("Missing or wrong API key", "Send the key as `Authorization: Bearer KEY` or `X-API-Key: KEY` "
                     "(`imgserve classify --api-key`, env `IMGSERVE_API_KEY`). Ask the operator for a key if you "
                     "have none."),
    "forbidden": ("Key lacks the role", "The key is valid but may not use this route (a serving key on model "
                  "load/unload). Use an admin key (`--admin-api-key`, or a key with the `admin` role)."),
    "request_timeout": ("Request body too slow", "The body arrived slower than `--body-min-rate` after "
                        "`--body-timeout-s`, and the connection was closed. Check the client's network; an operator "
                        "serving slow links may lower the rate or raise the grace."),
    "model_not_found": ("No such model or version", "Name a served model (`GET /models` lists them) and a version "
                        "it has, or leave the model out to use the default. An operator adds models to the "
                        "repository (`imgserve export`) and loads them."),
    "payload_too_large": ("Request or image too large", "Send a smaller body, fewer images per request, or "
                          "smaller images (see `--max-upload-bytes`, `--max-images-per-request`, "
                          "`--max-image-pixels`). Retrying unchanged fails the same way."),
    "unsupported_media_type": ("Content type not accepted", "Post `multipart/form-data` with "
                               "`file` parts, or a raw body as `image/jpeg`, `image/png`, `image/webp`, "
                               "`image/bmp`, `image/gif` or `application/octet-stream`."),
    "bad_parameter": ("Invalid parameter", "A query parameter or header has a value the service refuses (for "
                      "example `top_k` below 1 or an invalid model name). Fix the value the message names."),
    "rate_limited": ("Over the rate limit", "The key (or client address) sent more than `--rate-limit-rps`. Wait "
                     "the `Retry-After` seconds and slow down; ask the operator for a higher limit if it is "
                     "too low for your traffic."),
    "model_not_ready": ("Model loading or failed", "The model is still loading or failed to load. Retry after "
                        "`Retry-After` seconds; if it persists, `GET /health/ready` and the service log say why "
                        "(the operator reloads or fixes the model)."),
    "queue_full": ("Model queue full", "The service is shedding load: retry after `Retry-After` seconds with "
                   "backoff. An operator adds capacity (instances, a GPU, replicas) or raises `--max-queue-size`."),
    "server_busy": ("Too many request bodies in flight", "The process holds `--max-body-bytes-in-flight` of "
                    "request bodies already. Retry after a moment with backoff; an operator raises the budget "
                    "or adds replicas."),
    "runtime_unhealthy": ("Runtime hung", "A batch ran past the watchdog (`--watchdog-s`) and its runtime was "
                          "retired. Retry after `Retry-After` seconds; operators: check the log and the device, "
                          "then reload the model."),
    "engine_unavailable": ("Engine process restarting", "With `--processes N` the engine process is down or "
                           "restarting. Retry after `Retry-After` seconds; operators: the log says why it exited."),
    "deadline_exceeded": ("Deadline passed", "The answer could not be had within the request's deadline "
                          "(`X-Request-Timeout-Ms` or the model's default). Retry with a longer deadline, or later "
                          "when the service is less loaded."),
    "internal_error": ("Internal error", "An unexpected failure in the service. Retry once; if it persists, "
                       "report it with the `X-Request-ID` of the answer so the operator can find it in the log."),
    "inference_failed": ("Inference failed", "The runtime failed on this batch. Retry once; if it persists the "
                         "operator checks the log (the model or the device is at fault)."),
    "config_error": ("Setting cannot work here", "A service setting cannot work on this machine (for example "
                     "`--runtime openvino` without OpenVINO). Operators: fix the flag or install what the message "
                     "names, then restart."),
    "repository_error": ("Model repository entry unusable", "A model folder or its `config.pbtxt` cannot be "
                         "served as it is. Operators: fix or re-export the model (`imgserve export`), as the "
                         "message says."),
}


def _error_classes() -> list[type[errors.ServiceError]]:
    """ServiceError and every subclass that names its own machine code (``RemoteError`` carries others')."""
    found, todo = [], [errors.ServiceError]
    while todo:
        cls = todo.pop()
        if "code" in vars(cls):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def entries() -> list[CatalogueEntry]:
    """Every machine error code, by HTTP status then code; raises ``LookupError`` for a code without text."""
    out = []
    for cls in _error_classes():
        if cls.code not in _TEXT:
            raise LookupError(f"error code {cls.code!r} ({cls.__name__}) has no entry in service/error_catalogue.py")
        title, action = _TEXT[cls.code]
        out.append(CatalogueEntry(cls.code, cls.status, grpc_code(cls.status, cls.code).name, title, action,
                                  cls.__name__))
    return sorted(out, key=lambda e: (e.http_status, e.code))


def render_markdown() -> str:
    """The catalogue as the body of a Markdown page (no ``#`` title): a summary table, then one ``## <code>``
    section per code (anchor ``#<code>``, underscores kept) with its statuses and what to do."""
    rows = entries()
    lines = [
        "Every error answer names a machine code: `error.code` in the service's JSON body "
        '(`{"error": {"code", "message", "help"}}`), the `imgserve-error-code` trailing metadata over gRPC. '
        "Its `help` link (at the end of the message in the KServe v2 and gRPC answers) points to the entry "
        "below. Answers with `Retry-After` (HTTP header, `retry-after` gRPC metadata) may be retried after "
        "that many seconds.",
        "",
        "| Code | HTTP | gRPC | Meaning |",
        "|---|---|---|---|",
        *(f"| [`{e.code}`](#{e.code}) | {e.http_status} | `{e.grpc_status}` | {e.title} |" for e in rows),
    ]
    for e in rows:
        lines += ["", f"## {e.code}", "",
                  f"**{e.title}.** HTTP {e.http_status} · gRPC `{e.grpc_status}` · `service.errors.{e.error_class}`",
                  "", e.action]
    return "\n".join(lines) + "\n"


__all__ = ["CatalogueEntry", "entries", "help_link", "render_markdown"]
