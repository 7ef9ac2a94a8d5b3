"""What carries the engine client's calls to the engine: the ``Transport`` protocol and what its request
primitives pass (``Ticket``, ``Ran``).

The request protocol itself (admit -> pre -> run -> post -> release) is the client's, written once
(``service.engine.client``); a transport offers its steps: ``admit`` (reserve queue room, deadline-aware),
``pre_step`` (the model's per-image decode + preprocess, to run on the caller's side, or None when the
engine decodes: then admission travels with the run), ``run`` (the batcher and the runtime: one logits
row per payload) and ``release``. Two transports implement it: ``service.engine.engine.Engine`` in this
process, ``service.engine.remote.RemoteEngine`` over the engine process's socket and shared memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.engine.catalog import ServedModel
from service.engine.description import ModelDescription
from service.engine.statistics import ModelStat
from service.errors import ServiceError


@dataclass
class Ticket:
    """Queue room a transport granted for ``n`` payloads of ``model`` (``handle``: the transport's own
    record of it; None where admission travels with the run)."""

    model: ServedModel
    n: int
    deadline: float
    handle: object = None


@dataclass
class Ran:
    """A run's answer: per payload its logits row, or its own error (an image the device could not decode);
    and where the time went."""

    rows: list[np.ndarray | ServiceError]
    queue_s: float = 0.0
    compute_s: float = 0.0
    #: the engine's pre step, where the engine decoded (the caller's own is measured by the caller)
    preprocess_s: float = 0.0


class Transport(Protocol):
    # -- lifecycle and what is served ------------------------------------------------------------
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    #: before a request resolves its model: catch up with what the engine serves now (a no-op in-process)
    async def sync(self) -> None: ...
    def default_model(self) -> str: ...
    def knows(self, name: str) -> bool: ...
    def model(self, name: str | None, version: str | None) -> ServedModel: ...
    def versions(self, name: str) -> list[int]: ...
    def not_ready(self) -> dict[str, str]: ...
    def names(self) -> list[str]: ...
    def weights(self) -> dict[str, str]: ...
    async def describe(self, name: str) -> ModelDescription: ...
    async def load(self, name: str) -> ModelDescription: ...
    async def unload(self, name: str) -> None: ...
    def refresh_gauges(self) -> None: ...
    async def statistics(self) -> list[ModelStat]: ...

    # -- the request's steps (``model``: what this transport's ``model`` returned) -----------------
    def pre_step(self, model: ServedModel) -> Callable[[bytes], object] | None: ...
    async def admit(self, model: ServedModel, n: int, deadline: float, decodes: bool) -> Ticket: ...
    def release(self, ticket: Ticket) -> None: ...
    async def run(self, ticket: Ticket, payloads: list[Any]) -> Ran: ...
