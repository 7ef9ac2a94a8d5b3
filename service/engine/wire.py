"""The messages between a front end and the engine process (``--processes N``, docs/guides/process-model.md).

Frames on the engine's Unix socket are a 4-byte little-endian length and one MessagePack-encoded
``msgspec`` struct, tagged by type. Images never ride in them when they fit the front end's shared
memory arena (``service.engine.arena``): a ``Blob`` names a region of it; the bytes travel inline only
when the arena is full at that moment. Nothing is pickled.

Every request carries an ``id`` the engine echoes in its ``Reply``; replies come back on the connection
the request came in on, in whatever order they finish. Deadlines are ``time.monotonic()`` values:
CLOCK_MONOTONIC is one clock for every process of the host.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Literal

import msgspec

from service.engine.description import ModelDescription
from service.engine.statistics import ModelStat
from service.errors import Answerable, RemoteError, as_service_error

#: largest frame accepted: an inline image is at most --max-upload-bytes; the rest is small
MAX_FRAME = 1 << 30
_LEN = struct.Struct("<I")

#: the engine's socket in the supervisor's IPC folder (one engine per device; the CPU's is "cpu")
SOCKET = "engine-{device}.sock"


def socket_path(ipc_dir: str, device: str = "cpu") -> Path:
    return Path(ipc_dir) / SOCKET.format(device=device)


class Blob(msgspec.Struct, array_like=True):
    """Bytes in the sender's arena (``offset``, ``size``), or inline when ``data`` is set."""

    offset: int
    size: int
    data: bytes | None = None
    #: pixels: the float32 array's shape (empty for encoded image bytes)
    shape: tuple[int, ...] = ()


class Hello(msgspec.Struct, tag=True):
    """First frame of a connection: who is calling and where its arena is."""

    frontend: str
    arena: str
    arena_size: int


class Admit(msgspec.Struct, tag=True):
    """Reserve queue room for ``n`` images (deadline-aware); answered before the front end decodes."""

    id: int
    model: str
    version: str | None
    n: int
    deadline: float


class Release(msgspec.Struct, tag=True):
    """Give back an admission whose images will not come (one failed to decode); no reply."""

    id: int


class Run(msgspec.Struct, tag=True):
    """Run ``payloads`` through the model's batcher: pixels under the admission ``id`` (``admitted``), or,
    admitted here on arrival, model inputs (KServe tensors) or encoded images (the engine decodes them)."""

    id: int
    model: str
    version: str | None
    deadline: float
    payloads: list[Blob]
    admitted: bool = False


#: what a ``Call`` may ask
Op = Literal["status", "catalog", "describe", "load", "unload", "statistics"]


class Call(msgspec.Struct, tag=True):
    """Model management and status."""

    id: int
    op: Op
    name: str = ""


# -- what the engine answers (``Reply.ok``): typed, never a dict of strings ---------------------------
class PreprocessData(msgspec.Struct, array_like=True):
    resize_shorter: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class ViewData(msgspec.Struct):
    """What a front end may know of a served version (``service.engine.catalog.ModelView``)."""

    name: str
    version: int
    labels: list[str]
    timeout_s: float
    weights: str
    input_shape: tuple[int, ...]
    #: config.pbtxt as text (a protobuf message does not travel as msgpack)
    config: str
    platform: str
    decode: str
    load_id: str
    preprocess: PreprocessData


class Status(msgspec.Struct, tag=True):
    """What a front end polls: readiness, and the generation of the full catalog."""

    gen: str
    started: bool
    not_ready: dict[str, str]


class CatalogData(msgspec.Struct, tag=True):
    status: Status
    default: str | None
    states: dict[str, str]
    routes: dict[str, tuple[str, str]]
    fallbacks: dict[str, str]
    loaded: dict[str, list[ViewData]]


class Admitted(msgspec.Struct, tag=True):
    """An ``Admit`` granted: the version that will serve it."""

    model: str
    version: int


class Rows(msgspec.Struct, tag=True):
    """A ``Run``'s answer: one float32 logits row of ``classes`` values per payload, row after row (zeros
    where the payload has its own error in ``Reply.image_errors``), and where the time went."""

    data: bytes
    classes: int
    queue_s: float
    compute_s: float
    preprocess_s: float


class Stats(msgspec.Struct, tag=True):
    models: list[ModelStat]


class Described(msgspec.Struct, tag=True):
    """``describe`` / ``load``: the model as ``GET /models/{name}`` shows it."""

    model: ModelDescription


Answer = Admitted | Rows | Status | CatalogData | Stats | Described


class Failure(msgspec.Struct, array_like=True):
    """A ServiceError as data: the front end raises it again and renders it."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = {}


class Reply(msgspec.Struct, tag=True):
    id: int
    ok: Answer | None = None
    error: Failure | None = None
    #: per image: its own error (an undecodable image), None where it has predictions in ``ok``
    image_errors: list[Failure | None] | None = None


def failure(exc: Answerable) -> Failure:
    err = as_service_error(exc)
    return Failure(err.status, err.code, err.message, dict(err.headers))


def raised(f: Failure) -> RemoteError:
    return RemoteError(f.status, f.code, f.message, f.headers)


Message = Hello | Admit | Release | Run | Call | Reply

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    return _LEN.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message; ``asyncio.IncompleteReadError`` when the peer has gone."""
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the limit of {MAX_FRAME}")
    return _decoder.decode(await reader.readexactly(size))
