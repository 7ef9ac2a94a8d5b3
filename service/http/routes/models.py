"""Model listing and hot load / unload."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.deps import Client
from service.http.responses import JSONResponse

router = APIRouter()


@router.get("/models")
async def list_models(client: Client) -> JSONResponse:
    await client.sync()
    return JSONResponse({"models": [d.json() for d in await client.describe_all()],
                         "default_model": client.default_model()})


@router.get("/models/{name}")
async def get_model(name: str, client: Client) -> JSONResponse:
    return JSONResponse((await client.describe(name)).json())


@router.post("/models/{name}/load")
async def load_model(name: str, client: Client) -> JSONResponse:
    return JSONResponse((await client.load(name)).json())


@router.post("/models/{name}/unload")
async def unload_model(name: str, client: Client) -> JSONResponse:
    await client.unload(name)
    return JSONResponse({"name": name, "state": "unloaded"})
