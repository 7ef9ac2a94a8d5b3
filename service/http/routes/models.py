"""Model listing and hot load / unload."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ServiceError
from service.http.responses import JSONResponse

router = APIRouter()


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    try:
        default: str | None = engine.default_model()
    except ServiceError:  # nothing served yet, or the engine is down: the list says what there is
        default = None
    return JSONResponse({"models": [await engine.describe(n) for n in engine.names()], "default_model": default})


@router.get("/models/{name}")
async def get_model(name: str, request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.engine.describe(name))


@router.post("/models/{name}/load")
async def load_model(name: str, request: Request) -> JSONResponse:
    described = await request.app.state.engine.load(name)
    request.app.state.cache.drop_model(name)
    return JSONResponse(described)


@router.post("/models/{name}/unload")
async def unload_model(name: str, request: Request) -> JSONResponse:
    await request.app.state.engine.unload(name)
    request.app.state.cache.drop_model(name)
    return JSONResponse({"name": name, "state": "unloaded"})
