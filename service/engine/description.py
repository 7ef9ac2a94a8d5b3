"""What ``GET /models`` and ``/models/{name}`` answer of a model, typed: ``ModelDescription``.

Built by the engine (``ModelInstance.describe``, ``Engine.describe``), carried as it is over the engine
socket (``service.engine.wire.Described``) and rendered as JSON by the HTTP routes. Fields a model does
not have (an untested runtime's note, an accuracy check, a route) are left out of the JSON.
"""

from __future__ import annotations

import msgspec


class InputInfo(msgspec.Struct):
    name: str
    shape: list[int]


class PreprocessInfo(msgspec.Struct):
    resize_shorter: int
    crop: int
    mean: list[float]
    std: list[float]
    interpolation: str


class BatchingInfo(msgspec.Struct):
    max_batch_size: int
    preferred_batch_sizes: list[int]
    max_queue_delay_ms: float
    max_queue_size: int
    dispatch_when_idle: bool
    default_timeout_s: float


class AccuracyInfo(msgspec.Struct, omit_defaults=True):
    """What re-running the version's accuracy check set here found (``service.engine.accuracy_check``)."""

    #: passed | accepted_loss | served_fp32 | not_needed | no_check_set
    status: str
    message: str
    precision: str | None = None
    score: float | None = None
    gate: float | None = None
    images: int | None = None
    seconds: float | None = None
    exported_on: str | None = None
    checked_on: str | None = None


class ModelDescription(msgspec.Struct, omit_defaults=True):
    """A model: its state and versions always; the latest version's runtime, batching and provenance
    when one is loaded."""

    name: str
    state: str
    versions: list[str]
    version: str | None = None
    platform: str | None = None
    runtime: str | None = None
    precision: str | None = None
    device: str | None = None
    runtime_choice: str | None = None
    runtime_untested: str | None = None
    instances: int | None = None
    decode: str | None = None
    input: InputInfo | None = None
    num_classes: int | None = None
    preprocess: PreprocessInfo | None = None
    batching: BatchingInfo | None = None
    weights: str | None = None
    accuracy_check: AccuracyInfo | None = None
    source: dict[str, str] | None = None
    queue_depth: int | None = None
    #: a model that cannot run here (a plan without TensorRT) is served by this one
    served_by: str | None = None
    #: --runtime auto: why a variant on a better runtime serves this name
    route: str | None = None

    def json(self) -> dict[str, object]:
        """As the HTTP API renders it."""
        out: dict[str, object] = msgspec.to_builtins(self)
        return out
