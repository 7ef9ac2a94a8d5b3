"""KServe v2's gRPC messages <-> the codec's ``Request`` and ``Output`` (``service.kserve.codec``):
typed ``contents`` or ``raw_input_contents`` in, ``raw_output_contents`` out. What a request may carry
and what it answers is the codec's, the same as HTTP's."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from service.errors import BadRequest
from service.kserve.codec import Output, OutputSpec, Request, Tensor, timeout_param


def _param(params: Any, key: str) -> int | None:
    p = params.get(key)
    if p is None:
        return None
    kind = p.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise BadRequest(f"parameter {key} must be an integer, got {kind or 'nothing'}")
    return int(getattr(p, kind))


def _tensor(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    if raw is not None and t.HasField("contents"):
        raise BadRequest(f"input {t.name!r} has both contents and raw_input_contents: send one")
    values: Any = None
    if raw is None and t.HasField("contents"):
        c = t.contents
        values = list(c.bytes_contents) if t.datatype == "BYTES" else list(c.fp32_contents)
    return Tensor(t.name, t.datatype, list(t.shape), raw, values)


def parse(req: pb.ModelInferRequest) -> Request:
    raws = list(req.raw_input_contents)
    if len(raws) > len(req.inputs):
        raise BadRequest(f"{len(raws)} raw_input_contents for {len(req.inputs)} input(s)")
    inputs = [_tensor(t, raws[i] if i < len(raws) else None) for i, t in enumerate(req.inputs)]
    outputs = [OutputSpec(o.name, True, _param(o.parameters, "classification") or 0) for o in req.outputs]
    return Request(req.id or None, inputs, outputs or None, timeout_param(_param(req.parameters, "timeout")), True)


def response(out: Output, model: str, version: str, rid: str | None) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=rid or "")
    t = resp.outputs.add(name=out.name, datatype=out.datatype)
    t.shape[:] = out.shape
    resp.raw_output_contents.append(out.raw())
    return resp
