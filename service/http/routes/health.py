"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.http.deps import Client
from service.http.responses import JSONResponse

router = APIRouter()


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
async def ready(client: Client) -> JSONResponse:
    ok, reason = client.readiness()
    if ok:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "not_ready", "error": {"code": "not_ready", "message": reason}},
        status_code=503,
        headers={"Retry-After": "1"},
    )


@router.get("/metrics")
async def metrics(request: Request, client: Client) -> Response:
    client.refresh_gauges()
    body, content_type = client.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
