"""Model listing and hot load / unload."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.engine.manager import ModelManager
from service.errors import ModelNotFound
from service.http.responses import JSONResponse

router = APIRouter()


def _describe(manager: ModelManager, name: str) -> dict[str, object]:
    instances = manager.instances(name)
    state = manager.states.get(name, "unknown")
    if not instances:
        out: dict[str, object] = {"name": name, "state": state, "versions": []}
        if name in manager.fallbacks:
            out["served_by"] = manager.fallbacks[name]
        return out
    latest = instances[-1].describe()
    latest["state"] = state
    latest["versions"] = [str(i.version) for i in instances]
    if name in manager.routes:  # --runtime auto: a variant on a better runtime serves this name
        latest["served_by"], latest["route"] = manager.routes[name]
    return latest


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    return JSONResponse({"models": [_describe(manager, n) for n in manager.names()]})


@router.get("/models/{name}")
async def get_model(name: str, request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    if name not in manager.names():
        raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(manager.names()) or 'none'}")
    return JSONResponse(_describe(manager, name))


@router.post("/models/{name}/load")
async def load_model(name: str, request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    await manager.load(name)
    request.app.state.cache.drop_model(name)
    return JSONResponse(_describe(manager, name))


@router.post("/models/{name}/unload")
async def unload_model(name: str, request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    await manager.unload(name)
    request.app.state.cache.drop_model(name)
    return JSONResponse({"name": name, "state": "unloaded"})
