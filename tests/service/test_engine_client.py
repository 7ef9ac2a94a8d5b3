"""The engine client's request protocol (admit -> pre -> run -> post -> release), against a recording
transport: no runtime, no server, no timing. What every protocol and both real transports rely on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from modelrepo.errors import UndecodableImage
from service.config import Settings
from service.engine.client import EngineClient
from service.engine.statistics import ModelStat
from service.engine.transport import Ran, Ticket
from service.errors import BadImage, QueueFull
from service.metrics import Metrics

CLASSES = 4


@dataclass(frozen=True)
class Model:
    name: str = "m"
    version: int = 1
    labels: list[str] = field(default_factory=lambda: [f"c{i}" for i in range(CLASSES)])
    default_timeout_s: float = 30.0
    weights: str = "random"
    input_shape: tuple[int, ...] = (3, 2, 2)
    config: Any = None
    platform: str = "onnxruntime_onnx"
    preprocess: Any = None
    decode: str = "cpu"
    load_id: str = "load-1"


def _pre(data: bytes) -> np.ndarray:
    if data == b"bad":
        raise UndecodableImage("not an image")
    return np.full(3, float(data[0]), np.float32)


class Recording:
    """A transport that logs the steps it is asked for; image ``bytes([k])`` makes class ``k`` win."""

    def __init__(self, decodes_here: bool = True, full: bool = False) -> None:
        self.steps: list[str] = []
        self.decodes_here, self.full = decodes_here, full
        self.model_now = Model()

    async def sync(self) -> None:
        self.steps.append("sync")

    def default_model(self) -> str:
        return "m"

    def model(self, name: str | None, version: str | None) -> Model:
        return self.model_now

    def knows(self, name: str) -> bool:
        return name == "m"

    def pre_step(self, model: Any) -> Callable[[bytes], object] | None:
        return _pre if self.decodes_here else None

    async def admit(self, model: Any, n: int, deadline: float, decodes: bool) -> Ticket:
        self.steps.append(f"admit {n} decodes={decodes}")
        if self.full:
            raise QueueFull("queue is full")
        return Ticket(model, n, deadline, "held")

    def release(self, ticket: Ticket) -> None:
        self.steps.append(f"release {ticket.n}")

    async def run(self, ticket: Ticket, payloads: list[Any]) -> Ran:
        self.steps.append(f"run {len(payloads)}")
        rows: list[Any] = []
        for p in payloads:
            k = int(p[0]) if isinstance(p, np.ndarray) else p[0]
            rows.append(np.eye(CLASSES, dtype=np.float32)[k % CLASSES] * 10)
        return Ran(rows, queue_s=0.25, compute_s=0.5)

    async def statistics(self) -> list[ModelStat]:
        return []


def client(transport: Recording, cache_size: int = 0) -> EngineClient:
    s = Settings(model_repo="unused", runtime="auto", cache_size=cache_size, workers=1)
    return EngineClient(s, Metrics(), transport=transport)  # type: ignore[arg-type]


async def test_admission_comes_before_the_pre_step_and_post_is_one_top_k() -> None:
    t = Recording()
    c = client(t)
    model = await c.model(None, None)
    answer = await c.classify(model, [bytes([2]), bytes([1])], 2, deadline=1e9)
    assert t.steps == ["sync", "admit 2 decodes=True", "run 2"]
    assert [row[0]["index"] for row in answer.rows] == [2, 1]
    assert answer.rows[0][0]["label"] == "c2" and 0.99 < float(answer.rows[0][0]["score"]) <= 1.0  # type: ignore[arg-type]
    assert (answer.queue_s, answer.compute_s) == (0.25, 0.5)


async def test_a_bad_image_releases_the_room_runs_nothing_and_is_named() -> None:
    t = Recording()
    c = client(t)
    with pytest.raises(BadImage, match=r"image 1 \(b.jpg\): not an image"):
        await c.classify(Model(), [bytes([0]), b"bad"], 1, 1e9, ["a.jpg", "b.jpg"])
    assert t.steps == ["admit 2 decodes=True", "release 2"]


async def test_a_refused_admission_costs_no_decoding() -> None:
    t = Recording(full=True)
    with pytest.raises(QueueFull):
        await client(t).classify(Model(), [bytes([0])], 1, 1e9)
    assert t.steps == ["admit 1 decodes=True"]


async def test_where_the_engine_decodes_the_bytes_travel_and_admission_goes_with_them() -> None:
    t = Recording(decodes_here=False)
    answer = await client(t).classify(Model(), [bytes([3])], 1, 1e9)
    assert t.steps == ["admit 1 decodes=False", "run 1"] and answer.rows[0][0]["index"] == 3


async def test_the_cache_answers_again_until_the_model_is_reloaded() -> None:
    t = Recording()
    c = client(t, cache_size=8)
    first = await c.classify(Model(), [bytes([1])], 1, 1e9)
    again = await c.classify(Model(), [bytes([1])], 1, 1e9)
    assert again.rows == first.rows and t.steps.count("run 1") == 1
    reloaded = Model(load_id="load-2")  # same name and version, new weights: a new load
    await c.classify(reloaded, [bytes([1])], 1, 1e9)
    assert t.steps.count("run 1") == 2


async def test_tensors_are_admitted_without_a_pre_step() -> None:
    t = Recording()
    logits = await client(t).infer(Model(), np.zeros((2, 3), np.float32), 1e9)
    assert t.steps == ["admit 2 decodes=False", "run 2"] and logits.shape == (2, CLASSES)
