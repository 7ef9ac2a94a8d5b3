"""KServe v2's HTTP wire format <-> the codec's ``Request`` and ``Output`` (``service.kserve.codec``):
a JSON header, optionally followed by the binary tensor extension's raw contents
(``Inference-Header-Content-Length``), and the body's ``Content-Encoding``."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from service.errors import BadRequest, PayloadTooLarge
from service.kserve.codec import Output, OutputSpec, Request, Tensor, timeout_param

HEADER_LENGTH = "Inference-Header-Content-Length"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"request body is not valid {encoding}: {e}") from e
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return out


def header_length(raw: str | None, body_len: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a byte count within the body (None: all JSON)."""
    if raw is None:
        return None
    if not (raw.isdigit() and int(raw) <= body_len):
        raise BadRequest(f"{HEADER_LENGTH} {raw!r} is not a byte count within the {body_len}-byte body")
    return int(raw)


def parse(body: bytes, header_len: int | None) -> Request:
    """The JSON header and the binary contents that follow it (views into ``body``, not copies)."""
    hlen = len(body) if header_len is None else header_len
    try:
        req = orjson.loads(body[:hlen])
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"inference request header is not valid JSON: {e}") from e
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise BadRequest("inference request must be a JSON object with an 'inputs' list")
    params = _dict(req.get("parameters"), "parameters")
    view, offset = memoryview(body), hlen
    inputs = []
    for i, tin in enumerate(req["inputs"]):
        if not isinstance(tin, dict):
            raise BadRequest(f"input {i} is not a JSON object")
        size = _dict(tin.get("parameters"), f"input {i}'s parameters").get("binary_data_size")
        raw = None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(body):
                raise BadRequest(f"input {tin.get('name')!r}: binary_data_size {size!r} does not fit the "
                                 f"{len(body) - offset} bytes of binary data left in the body")
            raw, offset = view[offset:offset + size], offset + size
        elif "data" not in tin:
            raise BadRequest(f"input {tin.get('name')!r} has neither 'data' nor parameters.binary_data_size")
        inputs.append(Tensor(tin.get("name"), tin.get("datatype"), tin.get("shape"), raw, tin.get("data")))
    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes of binary data follow the header that no input declares")
    binary = bool(params.get("binary_data_output", False))
    return Request(req.get("id"), inputs, _outputs(req.get("outputs"), binary), timeout_param(params.get("timeout")),
                   binary)


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _outputs(asked: Any, binary: bool) -> list[OutputSpec] | None:
    if asked is None:
        return None
    if not isinstance(asked, list):
        raise BadRequest(f"'outputs' must be a list of objects, got {type(asked).__name__}")
    out = []
    for o in asked:
        if not isinstance(o, dict):
            raise BadRequest(f"unexpected inference output {o!r}: each output is an object with a 'name'")
        p = _dict(o.get("parameters"), f"output {o.get('name')!r}'s parameters")
        out.append(OutputSpec(str(o.get("name")), bool(p.get("binary_data", binary)), p.get("classification", 0)))
    return out


def render(out: Output, model: str, version: str, rid: str | None) -> tuple[bytes, bytes | None]:
    """(the JSON header, the binary contents that follow it or None)."""
    tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
    raw = None
    if out.binary:
        raw = out.raw()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    elif out.strings is not None:
        tensor["data"] = [s.decode() for s in out.strings]
    else:
        assert out.array is not None
        tensor["data"] = out.array.ravel().tolist()
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if rid is not None:
        head["id"] = rid
    head["outputs"] = [tensor]
    return orjson.dumps(head), raw
