"""What a protocol may know of the engine: the ``ServedModel`` it reads, what a classify call answers,
and the catalog a front end keeps of a remote engine.

``service.engine.engine.Engine`` (in this process) and ``service.engine.remote.RemoteEngine`` (the engine
process of ``--processes N``) are the two transports of ``service.engine.client``. The catalog is built in the engine
process (``service.engine.process``), sent as plain data and read back here (``Catalog``), whose ``get``
answers as the manager's does (``service.engine.lookup``). A ``ModelView`` carries what routes read of
a served version: never a runtime or a batcher. Nothing here imports a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.errors import ImageError
from modelrepo.preprocess import Preprocess
from service.engine import wire
from service.engine.lookup import lookup
from service.errors import BadImage, ServiceError, as_service_error


def image_error(err: BaseException) -> ServiceError:
    """An image's own failure as the error its caller gets (an unexpected decoder error is a bad image)."""
    if isinstance(err, ServiceError | ImageError):
        return as_service_error(err)
    if isinstance(err, Exception):
        return BadImage(f"could not be processed: {type(err).__name__}: {err}")
    raise err  # CancelledError, KeyboardInterrupt: not an image's fault


class ServedModel(Protocol):
    """What a route reads of the model version serving a request."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def default_timeout_s(self) -> float: ...
    @property
    def weights(self) -> str: ...
    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def config(self) -> mc.ModelConfig: ...
    @property
    def platform(self) -> str: ...
    @property
    def preprocess(self) -> Preprocess: ...
    @property
    def decode(self) -> str: ...
    @property
    def load_id(self) -> str: ...


@dataclass(frozen=True)
class ModelView:
    name: str
    version: int
    labels: list[str]
    default_timeout_s: float
    weights: str
    input_shape: tuple[int, ...]
    config: mc.ModelConfig
    platform: str
    preprocess: Preprocess
    #: "cpu" (the front end may decode and send pixels) or "gpu-jpeg" (the engine decodes the bytes)
    decode: str
    #: this load of the version (``ModelInstance.load_id``): what the result cache keys on
    load_id: str
    #: what the request named (the engine resolves it again: a reload may have moved it meanwhile)
    requested: tuple[str, str | None] = ("", None)


def parse_view(d: wire.ViewData) -> ModelView:
    pp = d.preprocess
    return ModelView(
        name=d.name, version=d.version, labels=d.labels, default_timeout_s=d.timeout_s, weights=d.weights,
        input_shape=d.input_shape, config=text_format.Parse(d.config, mc.ModelConfig()), platform=d.platform,
        decode=d.decode, load_id=d.load_id,
        preprocess=Preprocess(resize_shorter=pp.resize_shorter, crop=pp.crop, mean=pp.mean, std=pp.std,
                              interpolation=pp.interpolation),
    )


@dataclass
class Catalog:
    gen: str = ""
    started: bool = False
    not_ready: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    states: dict[str, str] = field(default_factory=dict)
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    loaded: dict[str, dict[int, ModelView]] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: wire.CatalogData) -> Catalog:
        return cls(
            gen=d.status.gen, started=d.status.started, not_ready=d.status.not_ready, default=d.default,
            states=d.states, routes=d.routes, fallbacks=d.fallbacks,
            loaded={n: {v.version: v for v in map(parse_view, vs)} for n, vs in d.loaded.items()},
        )

    def get(self, name: str, version: str | None) -> ModelView:
        n, v = lookup(name, version, self.loaded, self.states, self.routes, self.fallbacks)
        return self.loaded[n][v]

    def names(self) -> list[str]:
        return sorted(set(self.states) | set(self.loaded))
