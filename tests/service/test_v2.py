"""KServe v2 / Open Inference Protocol, driven by the real tritonclient.http against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelrepo.image_preprocess import preprocess
from modelrepo.preprocess import Preprocess
from tests.conftest import jpeg_bytes
from tests.service.conftest import API_KEY, Server, start_server

pytestmark = pytest.mark.slow

MODEL = "resnet18"


def auth() -> dict[str, str]:
    """A fresh dict each call: tritonclient adds Inference-Header-Content-Length to the one it is given."""
    return {"X-API-Key": API_KEY}


def triton(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60.0)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    c = triton(server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def big_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The main server takes 1 MB bodies (one binary image); JSON tensors are ~3 MB an image. This one
    forces ONNX Runtime (still fully supported), so its logits match the ONNX Runtime reference exactly;
    the main server runs the default (OpenVINO, BF16 where the CPU has it)."""
    s = start_server(
        model_repo,
        tmp_path_factory.mktemp("srv_v2"),
        "--runtime",
        "onnxruntime",
        "--api-key",
        API_KEY,
        "--max-upload-bytes",
        str(32 * 1024 * 1024),
        "--max-images-per-request",
        "4",
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def big_client(big_server: Server) -> Iterator[httpclient.InferenceServerClient]:
    c = triton(big_server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def batch(photos: dict[str, bytes]) -> np.ndarray:
    pp = Preprocess()
    return np.stack([preprocess(photos[n], pp, 10_000_000) for n in ("chelsea.jpg", "coffee.jpg")])


@pytest.fixture(scope="module")
def reference(model_repo: Path, batch: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model_repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"input": batch})[0]
    return out


def make_input(x: np.ndarray, binary: bool = True, name: str = "input") -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "FP64")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=auth())
    assert client.is_model_ready(MODEL, "1", headers=auth())
    assert not client.is_model_ready("no_such_model", headers=auth())
    assert not client.is_model_ready(MODEL, "7", headers=auth())
    meta = client.get_server_metadata(headers=auth())
    assert meta["name"] == "imgserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    for version in ("", "1"):
        meta = client.get_model_metadata(MODEL, version, headers=auth())
        assert meta["name"] == MODEL and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    cfg = client.get_model_config(MODEL, headers=auth())
    assert cfg["name"] == MODEL and cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, 224, 224]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        client.get_model_metadata("nope", headers=auth())
    assert e.value.status() == "404"


def test_infer_binary_matches_onnxruntime(
    client: httpclient.InferenceServerClient,
    big_client: httpclient.InferenceServerClient,
    batch: np.ndarray,
    reference: np.ndarray,
) -> None:
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=True)]
    res = big_client.infer(MODEL, [make_input(batch)], outputs=outputs, headers=auth(), request_id="r-1")
    logits = res.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)
    resp = res.get_response()
    assert resp["model_name"] == MODEL and resp["model_version"] == "1" and resp["id"] == "r-1"
    # No outputs named: all of them, binary (tritonclient sets binary_data_output); explicit version path.
    res = big_client.infer(MODEL, [make_input(batch[:1])], model_version="1", headers=auth())
    np.testing.assert_allclose(res.as_numpy("logits"), reference[:1], atol=1e-4, rtol=0)


def test_infer_json_matches_onnxruntime(
    big_client: httpclient.InferenceServerClient, batch: np.ndarray, reference: np.ndarray
) -> None:
    c = big_client
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=False)]
    res = c.infer(MODEL, [make_input(batch, binary=False)], outputs=outputs, headers=auth())
    assert "data" in res.get_output("logits")  # came back as JSON, not binary
    np.testing.assert_allclose(res.as_numpy("logits"), reference, atol=1e-4, rtol=0)
    # Binary input, JSON output and the other way round.
    res = c.infer(MODEL, [make_input(batch, binary=True)], outputs=outputs, headers=auth())
    np.testing.assert_allclose(res.as_numpy("logits"), reference, atol=1e-4, rtol=0)
    res = c.infer(MODEL, [make_input(batch, binary=False)], headers=auth())
    np.testing.assert_allclose(res.as_numpy("logits"), reference, atol=1e-4, rtol=0)


def test_json_nested_data_over_plain_http(big_server: Server, batch: np.ndarray, reference: np.ndarray) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": batch[:1].tolist()}]}
    with big_server.client() as c:
        r = c.post(f"/v2/models/{MODEL}/infer", content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "logits" and out["shape"] == [1, 1000] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(1, 1000), reference[:1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension(
    big_client: httpclient.InferenceServerClient, batch: np.ndarray, reference: np.ndarray, binary: bool
) -> None:
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
    res = big_client.infer(MODEL, [make_input(batch)], outputs=outputs, headers=auth())
    classes = res.as_numpy("logits")
    assert classes.shape == (2, 3)
    probs = np.exp(reference - reference.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for n in range(2):
        parsed = [s.decode() if isinstance(s, bytes) else s for s in classes[n]]
        fields = [p.split(":", 2) for p in parsed]
        assert [int(f[1]) for f in fields] == list(np.argsort(-reference[n])[:3])
        # the score is the softmax probability, as /classify answers it (one meaning of a score)
        np.testing.assert_allclose([float(f[0]) for f in fields], np.sort(probs[n])[::-1][:3], atol=1e-5)
        assert all(f[2] for f in fields)


def test_bad_requests_get_clear_errors(client: httpclient.InferenceServerClient, batch: np.ndarray) -> None:
    one = batch[:1]  # the main server takes one binary image a request (1 MB bodies)
    with pytest.raises(InferenceServerException, match="unexpected inference input 'image'.*expected 'input'") as e:
        client.infer(MODEL, [make_input(one, name="image")], headers=auth())
    assert e.value.status() == "400"
    small = np.zeros((1, 3, 200, 200), np.float32)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 200, 200\].*\[-1, 3, 224, 224\]") as e:
        client.infer(MODEL, [make_input(small)], headers=auth())
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="datatype 'FP64'") as e:
        client.infer(MODEL, [make_input(np.zeros((1, 3, 2, 2)))], headers=auth())
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unexpected inference output 'probs'") as e:
        client.infer(MODEL, [make_input(one)], outputs=[httpclient.InferRequestedOutput("probs")], headers=auth())
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        client.infer("nope", [make_input(one)], headers=auth())
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no loaded version '3'") as e:
        client.infer(MODEL, [make_input(one)], model_version="3", headers=auth())
    assert e.value.status() == "404"


def test_body_limit_and_batch_limit(
    client: httpclient.InferenceServerClient, big_client: httpclient.InferenceServerClient, batch: np.ndarray
) -> None:
    # The main server takes 1 MB bodies: one image as JSON is ~3 MB.
    with pytest.raises(InferenceServerException, match="over the limit") as e:
        client.infer(MODEL, [make_input(batch[:1], binary=False)], headers=auth())
    assert e.value.status() == "413"
    # ... and at most 4 images a request.
    five = np.zeros((5, 3, 224, 224), np.float32)
    with pytest.raises(InferenceServerException, match="batch of 5 .* limit of 4") as e:
        big_client.infer(MODEL, [make_input(five)], headers=auth())
    assert e.value.status() == "413"


def test_malformed_bodies(server: Server) -> None:
    with server.client() as c:
        r = c.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        head = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 3, 224, 224],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 602112},
                    }
                ]
            }
        )
        r = c.post(
            f"/v2/models/{MODEL}/infer",
            content=head + b"\0" * 100,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert r.status_code == 400 and "100 bytes of binary data" in r.json()["error"]
        r = c.post(f"/v2/models/{MODEL}/infer", content=head, headers={"Inference-Header-Content-Length": "99999"})
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def _batches(server: Server) -> tuple[float, float]:
    """(batches run, images in them) so far, from the Prometheus histogram."""
    with server.client() as c:
        text = c.get("/metrics").text
    vals = {}
    for line in text.splitlines():
        for key in ("count", "sum"):
            if line.startswith(f"inference_batch_size_{key}{{") and f'model="{MODEL}"' in line:
                vals[key] = float(line.rsplit(" ", 1)[1])
    return vals.get("count", 0.0), vals.get("sum", 0.0)


def test_v2_shares_batches_with_classify(server: Server, batch: np.ndarray) -> None:
    before = _batches(server)

    def v2(_: int) -> np.ndarray:
        c = triton(server)
        try:
            return c.infer(MODEL, [make_input(batch[:1])], headers=auth()).as_numpy("logits")
        finally:
            c.close()

    def classify(i: int) -> int:  # a fresh image each: the server's result cache must not answer it
        img = jpeg_bytes(np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8))
        with server.client() as c:
            return c.post("/classify", content=img, headers={"Content-Type": "image/jpeg"}).status_code

    with ThreadPoolExecutor(8) as pool:
        v2_jobs = [pool.submit(v2, i) for i in range(4)]
        cls_jobs = [pool.submit(classify, i) for i in range(4)]
        assert all(j.result().shape == (1, 1000) for j in v2_jobs)
        assert all(j.result() == 200 for j in cls_jobs)
    after = _batches(server)
    batches, images = after[0] - before[0], after[1] - before[1]
    assert images == 8 and batches < images  # the server queues for 20 ms: some requests shared a batch
