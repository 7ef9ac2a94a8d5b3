"""KServe v2 over gRPC, through the real client (``tritonclient.grpc``: sync, asyncio, streaming)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.service.conftest import Server, free_port, start_server

pytestmark = pytest.mark.slow

KEY, ADMIN = "grpc-serving-key-0123", "grpc-admin-key-0123"
MODEL = "resnet18"


@pytest.fixture(scope="module")
def served(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    port = free_port()
    srv = start_server(model_repo, tmp_path_factory.mktemp("grpc"), "--grpc-port", str(port), "--api-key", KEY,
                       "--admin-api-key", ADMIN, "--cache-size", "0")
    yield srv, f"127.0.0.1:{port}"
    srv.stop()


def client(url: str) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(url)


HEAD = {"authorization": f"Bearer {KEY}"}


def jpeg_input(*images: bytes) -> tg.InferInput:
    inp = tg.InferInput("input", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(list(images), dtype=object))
    return inp


def tensor_input(x: np.ndarray, dtype: str = "FP32") -> tg.InferInput:
    inp = tg.InferInput("input", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


def rows(result: tg.InferResult) -> list[list[tuple[int, float]]]:
    """``score:index:label`` strings -> (index, score) per row."""
    out = result.as_numpy("logits")
    return [[(int(s.split(b":")[1]), float(s.split(b":")[0])) for s in row] for row in out]


def test_health_and_metadata(served: tuple[Server, str]) -> None:
    srv, url = served
    c = client(url)
    assert c.is_server_live(headers=HEAD) and c.is_server_ready(headers=HEAD)
    assert c.is_model_ready(MODEL, headers=HEAD)
    meta = c.get_model_metadata(MODEL, headers=HEAD, as_json=True)
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}
    cfg = c.get_model_config(MODEL, headers=HEAD, as_json=True)["config"]
    assert cfg["name"] == MODEL and cfg["max_batch_size"] == 8
    assert c.get_server_metadata(headers=HEAD).name == "imgserve"
    with grpc.insecure_channel(url) as ch:  # Kubernetes' gRPC probe
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def _http_v2(srv: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=60.0)


def test_an_image_gets_the_same_labels_and_scores_through_every_protocol(
        served: tuple[Server, str], photos: dict[str, bytes]) -> None:
    """One top-k, one meaning of a score (the softmax probability): /classify, v2 HTTP with the images as
    BYTES, v2 gRPC with the images as BYTES."""
    srv, url = served
    names = sorted(photos)
    images = np.array([photos[n] for n in names], dtype=object)
    grpc_rows = rows(client(url).infer(MODEL, [jpeg_input(*images)], headers=HEAD,
                                       outputs=[tg.InferRequestedOutput("logits", class_count=3)]))
    inp = httpclient.InferInput("input", [len(names)], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    with contextlib.closing(_http_v2(srv)) as h:
        res = h.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)],
                      headers=dict(HEAD))
    http_rows = [[(int(s.split(b":")[1]), float(s.split(b":")[0])) for s in row] for row in res.as_numpy("logits")]
    for name, g, h_ in zip(names, grpc_rows, http_rows, strict=True):
        r = httpx.post(f"{srv.url}/classify?top_k=3", content=photos[name], timeout=60,
                       headers={"Content-Type": "image/jpeg", "X-API-Key": KEY}).json()
        want = [(p["index"], p["score"]) for p in r["results"][0]["predictions"]]
        assert g == want and h_ == want, name  # the same six decimals everywhere


def test_the_repository_extension_over_http_and_grpc(served: tuple[Server, str]) -> None:
    srv, url = served
    with contextlib.closing(_http_v2(srv)) as h:
        index = h.get_model_repository_index(headers=dict(HEAD))
        assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
        with pytest.raises(InferenceServerException) as e:
            h.load_model(MODEL, headers=dict(HEAD))  # a serving key may not
        assert e.value.status() == "403"
        h.load_model(MODEL, headers={"x-api-key": ADMIN})  # tritonclient.http's load_model: no 404 any more
        assert h.is_model_ready(MODEL, headers=dict(HEAD))
    models = client(url).get_model_repository_index(headers=HEAD).models
    assert [(m.name, m.version, m.state) for m in models] == [(MODEL, "1", "READY")]


def test_tensors_agree_with_http_v2_in_fp32_and_fp16(served: tuple[Server, str]) -> None:
    srv, url = served
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits = client(url).infer(MODEL, [tensor_input(x)], headers=HEAD).as_numpy("logits")
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json=body, headers={"X-API-Key": KEY}, timeout=60)
    want = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
    assert np.allclose(logits, want, atol=1e-4)
    half = client(url).infer(MODEL, [tensor_input(x.astype(np.float16), "FP16")], headers=HEAD).as_numpy("logits")
    assert (half.argmax(1) == want.argmax(1)).all()


def test_aio_and_streaming_answer_in_order(served: tuple[Server, str], photos: dict[str, bytes]) -> None:
    _, url = served
    images = list(photos.values())

    async def aio() -> list[list[tuple[int, float]]]:
        async with tga.InferenceServerClient(url) as c:
            outs = [tga.InferRequestedOutput("logits", class_count=1)]
            results = await asyncio.gather(*(
                c.infer(MODEL, [_aio_jpeg(img)], headers=HEAD, outputs=outs, request_id=str(i))
                for i, img in enumerate(images)))
            return [rows(r)[0] for r in results]

    via_aio = asyncio.run(aio())
    answers: queue.Queue[tuple[tg.InferResult | None, Exception | None]] = queue.Queue()
    c = client(url)
    c.start_stream(callback=lambda result, error: answers.put((result, error)), headers=HEAD)
    try:
        for i in range(12):
            c.async_stream_infer(MODEL, [jpeg_input(images[i % len(images)])], request_id=str(i),
                                 outputs=[tg.InferRequestedOutput("logits", class_count=1)])
        got = [answers.get(timeout=60) for _ in range(12)]
    finally:
        c.stop_stream()
    assert [r.get_response().id for r, e in got if r is not None] == [str(i) for i in range(12)]
    assert [rows(r)[0][0][0] for r, _ in got] == [via_aio[i % len(images)][0][0] for i in range(12)]


def _aio_jpeg(data: bytes) -> tga.InferInput:
    inp = tga.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=object))
    return inp


def _status(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except tg.InferenceServerException as e:
        return getattr(grpc.StatusCode, str(e.status()).removeprefix("StatusCode."))
    raise AssertionError("the call succeeded")


def test_status_codes(served: tuple[Server, str]) -> None:
    _, url = served
    c = client(url)
    x = tensor_input(np.zeros((1, 3, 224, 224), np.float32))
    assert _status(lambda: c.infer(MODEL, [x])) == grpc.StatusCode.UNAUTHENTICATED
    assert _status(lambda: c.infer("nope", [x], headers=HEAD)) == grpc.StatusCode.NOT_FOUND
    assert _status(lambda: c.infer(MODEL, [x], model_version="9", headers=HEAD)) == grpc.StatusCode.NOT_FOUND
    small = tensor_input(np.zeros((1, 3, 2, 2), np.float32))
    assert _status(lambda: c.infer(MODEL, [small], headers=HEAD)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: c.infer(MODEL, [jpeg_input(b"not an image")], headers=HEAD)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: c.load_model(MODEL, headers=HEAD)) == grpc.StatusCode.PERMISSION_DENIED
    c.load_model(MODEL, headers={"x-api-key": ADMIN})  # an admin key reloads it
    assert c.is_model_ready(MODEL, headers=HEAD)
    assert c.get_inference_statistics(MODEL, headers=HEAD).model_stats[0].inference_count > 0


_shapes = st.lists(st.integers(-2, 300), min_size=0, max_size=5)
_dtypes = st.sampled_from(["FP32", "FP16", "BYTES", "INT8", "FP64", "", "BOOL"])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=_shapes, dtype=_dtypes, raw=st.binary(max_size=600), name=st.sampled_from(["input", "x", ""]),
       huge=st.booleans())
def test_malformed_requests_are_invalid_arguments_never_internal(
    served: tuple[Server, str], shape: list[int], dtype: str, raw: bytes, name: str, huge: bool
) -> None:
    """Wrong shapes, dtypes, raw sizes, huge declared dims, empty batches, garbage BYTES: a client's
    mistake is INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for a batch over the limit), never INTERNAL."""
    _, url = served
    req = pb.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name=name, datatype=dtype)
    t.shape[:] = [2**40, *shape] if huge else shape
    req.raw_input_contents.append(raw)
    with grpc.insecure_channel(url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        try:
            stub.ModelInfer(req, metadata=list(HEAD.items()), timeout=30)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), \
                (e.code(), e.details())
        else:
            raise AssertionError("a malformed request was answered")


def test_server_stays_ready_after_the_fuzzing(served: tuple[Server, str]) -> None:
    _, url = served
    assert client(url).is_server_ready(headers=HEAD)


def wait_until_not_serving(url: str, seconds: float = 30.0) -> None:
    """Poll the health service (a fresh connection each time) until it says NOT_SERVING or refuses."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with grpc.insecure_channel(url) as ch:
            try:
                got = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.RpcError:
                return
            if got.status != health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.05)
    raise AssertionError("the gRPC server still serves new RPCs after SIGTERM")


def test_sigterm_lets_in_flight_rpcs_finish_and_refuses_new_ones(model_repo: Path, tmp_path: Path,
                                                                   photos: dict[str, bytes]) -> None:
    """A stream open at SIGTERM keeps being answered until it ends; a new RPC is refused (UNAVAILABLE)."""
    port = free_port()
    srv = start_server(model_repo, tmp_path, "--grpc-port", str(port))
    url = f"127.0.0.1:{port}"
    answers: queue.Queue[tuple[tg.InferResult | None, Exception | None]] = queue.Queue()
    c = client(url)
    outs = [tg.InferRequestedOutput("logits", class_count=1)]
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        c.async_stream_infer(MODEL, [jpeg_input(photos["coffee.jpg"])], request_id="before", outputs=outs)
        assert answers.get(timeout=60)[0] is not None  # the stream is in flight
        srv.proc.terminate()
        wait_until_not_serving(url)
        assert _status(lambda: client(url).infer(MODEL, [jpeg_input(photos["coffee.jpg"])], outputs=outs)) \
            == grpc.StatusCode.UNAVAILABLE
        c.async_stream_infer(MODEL, [jpeg_input(photos["coffee.jpg"])], request_id="after", outputs=outs)
        result, error = answers.get(timeout=60)
        assert error is None and result is not None and result.get_response().id == "after"
    finally:
        c.stop_stream()
    assert srv.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it drained on
