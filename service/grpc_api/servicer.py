"""``inference.GRPCInferenceService``: the same engine, rules and errors as the HTTP routes.

Every RPC passes the front end's access control (``authorization: Bearer`` or ``x-api-key`` metadata;
load/unload need an admin key; the per-key rate limit), resolves its model through the engine, and
answers a ServiceError with its gRPC status (``service.grpc_api.status``). The RPC's deadline is the
request's deadline for admission and the batcher. Inference is counted in the same metrics as HTTP's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelrepo.config import check_version
from service.access import AccessControl
from service.engine.catalog import ServedModel
from service.engine.client import EngineClient
from service.errors import ANSWERABLE, Answerable, ServiceError
from service.grpc_api import tensors
from service.grpc_api.status import grpc_status
from service.kserve import codec, repository
from service.kserve.metadata import EXTENSIONS, SERVER_NAME, io_metadata, server_version

T = TypeVar("T")
#: requests of one stream in flight at once (answers still go back in order)
STREAM_WINDOW = 64


def _peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` / ``ipv6:[::1]:5555`` -> the address (the rate limit's key without an API key)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    return rest.rpartition(":")[0] if kind == "ipv4" else peer


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, client: EngineClient, access: AccessControl) -> None:
        self.client, self.access = client, access

    # -- the rules every RPC follows ---------------------------------------------------------------
    async def _admit(self, context: grpc.aio.ServicerContext, method: str, path: str) -> None:
        headers = {k.encode("latin-1"): (v if isinstance(v, bytes) else v.encode("latin-1"))
                   for k, v in (context.invocation_metadata() or ())}
        refused = await self.access.check(method, path, headers, _peer_host(context.peer()))
        if refused is not None:
            raise refused

    async def _answer(self, context: grpc.aio.ServicerContext, method: str, path: str,
                      fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` behind access control, its errors as gRPC statuses (never UNKNOWN for a client's mistake)."""
        try:
            await self._admit(context, method, path)
            return await fn()
        except ANSWERABLE as e:
            code, message, trailing = grpc_status(e)
            context.set_trailing_metadata(trailing)
            await context.abort(code, message)
            raise  # abort raises; this line is for the type checker

    async def _model(self, name: str, version: str) -> ServedModel:
        return await self.client.model(name, check_version(version or None))

    # -- health and metadata -------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.client.readiness()[0])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        async def ready() -> pb.ModelReadyResponse:
            try:
                await self._model(request.name, request.version)
            except ServiceError as e:
                if e.status == 404:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._answer(context, "GET", f"/v2/models/{request.name}/ready", ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        return await self._answer(context, "GET", "/v2", lambda: _done(pb.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:  # noqa: N802
        async def metadata() -> pb.ModelMetadataResponse:
            inst = await self._model(request.name, request.version)
            inp, out = io_metadata(inst)
            versions = [request.version] if request.version else [str(v) for v in self.client.versions(inst.name)]
            resp = pb.ModelMetadataResponse(name=inst.name, versions=versions, platform=inst.platform)
            for t, spec in ((resp.inputs.add(), inp), (resp.outputs.add(), out)):
                t.name, t.datatype = spec["name"], spec["datatype"]
                t.shape[:] = spec["shape"]
            return resp

        return await self._answer(context, "GET", f"/v2/models/{request.name}", metadata)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        async def config() -> pb.ModelConfigResponse:
            return pb.ModelConfigResponse(config=(await self._model(request.name, request.version)).config)

        return await self._answer(context, "GET", f"/v2/models/{request.name}/config", config)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:  # noqa: N802,E501
        async def statistics() -> pb.ModelStatisticsResponse:
            if request.name:
                await self._model(request.name, request.version)  # 404 for an unknown model or version
            resp = pb.ModelStatisticsResponse()
            for st in await self.client.statistics():
                if request.name and (st.name != request.name or (request.version and st.version != request.version)):
                    continue
                ok, fail = st.success_count, st.fail_count
                s = resp.model_stats.add(name=st.name, version=st.version, last_inference=st.last_inference_ms,
                                         inference_count=ok, execution_count=ok + fail)
                s.inference_stats.success.count, s.inference_stats.success.ns = ok, st.success_ns
                s.inference_stats.fail.count, s.inference_stats.fail.ns = fail, st.fail_ns
            return resp

        return await self._answer(context, "GET", "/v2/models/stats", statistics)

    # -- model repository extension (admin key for load / unload) -------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:  # noqa: N802
        async def index() -> pb.RepositoryIndexResponse:
            resp = pb.RepositoryIndexResponse()
            for m in await repository.index(self.client):
                if m["state"] == "READY" or not request.ready:
                    resp.models.add(**m)
            return resp

        return await self._answer(context, "POST", "/v2/repository/index", index)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> Any:  # noqa: N802
        async def load() -> pb.RepositoryModelLoadResponse:
            await self.client.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, "POST", f"/models/{request.model_name}/load", load)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> Any:  # noqa: N802
        async def unload() -> pb.RepositoryModelUnloadResponse:
            await self.client.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, "POST", f"/models/{request.model_name}/unload", unload)

    # -- inference -------------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        remaining = context.time_remaining()
        return await self._answer(context, "POST", f"/v2/models/{request.model_name}/infer",
                                  lambda: self.infer(request, remaining))

    async def infer(self, req: pb.ModelInferRequest, remaining: float | None) -> pb.ModelInferResponse:
        """Parse (in the worker pool), one call to the codec, render; counted in the request metrics with the
        HTTP status it would have had."""
        client, s = self.client, self.client.settings
        with client.track(req.model_name, protocol="grpc") as rec:
            model = await self._model(req.model_name, req.model_version)
            rec.served_by(model)
            checked = await asyncio.get_running_loop().run_in_executor(
                client.pool, _parse, req, model, s.max_images_per_request, s.max_upload_bytes)
            limits = [t for t in (checked.timeout_s, remaining) if t is not None]
            deadline = rec.started + (min(limits) if limits else model.default_timeout_s)
            out = await codec.infer(client, model, checked, deadline)
            return tensors.response(out, model.name, str(model.version), checked.id)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Bidirectional: up to STREAM_WINDOW requests run at once; answers go back in request order, an
        error in its place as ``error_message`` (the stream itself goes on)."""
        window: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue(STREAM_WINDOW)

        async def one(req: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                await self._admit(context, "POST", f"/v2/models/{req.model_name}/infer")
                return pb.ModelStreamInferResponse(infer_response=await self.infer(req, context.time_remaining()))
            except ANSWERABLE as e:
                return pb.ModelStreamInferResponse(error_message=_message(e))

        async def read() -> None:
            async for req in request_iterator:
                await window.put(asyncio.get_running_loop().create_task(one(req)))
            await window.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
        finally:
            reader.cancel()
            while not window.empty():
                if (t := window.get_nowait()) is not None:
                    t.cancel()


def _message(e: Answerable) -> str:
    code, message, _ = grpc_status(e)
    return f"[StatusCode.{code.name}] {message}"


def _parse(req: pb.ModelInferRequest, model: ServedModel, max_items: int, max_bytes: int) -> codec.Checked:
    """Blocking (runs in the worker pool): the message -> a request checked against ``model``."""
    return codec.check(tensors.parse(req), model, max_items, max_bytes)


async def _done(value: T) -> T:
    return value
