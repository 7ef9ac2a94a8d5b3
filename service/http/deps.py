"""What a route may take from the app, typed: the one place that reads ``app.state``.

FastAPI routes declare ``client: Client`` (``Annotated[EngineClient, Depends(...)]``); the plain
Starlette endpoint of ``/classify`` (its hot path skips dependency solving) calls the same functions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from service.config import Settings
from service.engine.client import EngineClient


def engine_client(request: Request) -> EngineClient:
    client: EngineClient = request.app.state.client
    return client


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# FastAPI runs a plain ``def`` dependency in its thread pool (a thread hop per request); these read an
# attribute, so they are coroutines and run on the event loop.
async def _client(request: Request) -> EngineClient:
    return engine_client(request)


async def _settings(request: Request) -> Settings:
    return app_settings(request)


Client = Annotated[EngineClient, Depends(_client)]
AppSettings = Annotated[Settings, Depends(_settings)]
