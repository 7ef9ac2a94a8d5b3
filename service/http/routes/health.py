"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.http.responses import JSONResponse

router = APIRouter()


def readiness(request: Request) -> tuple[bool, str]:
    return readiness_of(request.app.state)


def readiness_of(state: Any) -> tuple[bool, str]:
    """Ready, or why not: draining, or what the engine says (also gRPC's ServerReady and health service)."""
    if state.draining:
        return False, "shutting down"
    pending = state.engine.not_ready()
    if pending:
        return False, "; ".join(s if n == "*" else f"{n}: {s}" for n, s in sorted(pending.items()))
    return True, "ready"


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    ok, reason = readiness(request)
    if ok:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "not_ready", "error": {"code": "not_ready", "message": reason}},
        status_code=503,
        headers={"Retry-After": "1"},
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    request.app.state.engine.refresh_gauges()
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
