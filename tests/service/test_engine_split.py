"""``--processes 2``: two HTTP front ends feed ONE engine process, and failure stays contained
(docs/guides/process-model.md).

Each test reads the supervisor's log for the processes' pids ("engine started (pid N)").
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import Server, free_port, start_server

pytestmark = pytest.mark.slow

JPEG = {"Content-Type": "image/jpeg"}
RUNTIME_LIBS = re.compile(r"onnxruntime|openvino|libcuda|libtorch")


def pids(srv: Server, name: str) -> list[int]:
    """Every pid the supervisor started for ``name`` ("engine", "front-end-0", ...), oldest first."""
    return [int(p) for p in re.findall(rf"{re.escape(name)} started \(pid (\d+)\)", srv.logs())]


def wait_for(what: str, check: object, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ready(srv: Server) -> bool:
    try:
        return httpx.get(f"{srv.url}/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def split(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(model_repo, tmp_path_factory.mktemp("split"), "--processes", "2",
                       "--grpc-port", str(free_port()))
    wait_for("both front ends", lambda: srv.logs().count("Application startup complete.") == 2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def single(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(model_repo, tmp_path_factory.mktemp("single"))
    yield srv
    srv.stop()


def test_front_ends_map_no_runtime_and_the_engine_does(split: Server) -> None:
    for name in ("front-end-0", "front-end-1"):
        maps = Path(f"/proc/{pids(split, name)[-1]}/maps").read_text()
        assert not RUNTIME_LIBS.search(maps), f"{name} mapped a runtime library"
    assert RUNTIME_LIBS.search(Path(f"/proc/{pids(split, 'engine')[-1]}/maps").read_text())


def assert_same_answers(url: str, single: Server, photos: dict[str, bytes]) -> None:
    """Every photo's top-5 from ``url`` is the one-process service's (labels, and scores to 1e-5)."""
    for name, data in photos.items():
        a = httpx.post(f"{url}/classify?top_k=5", content=data, headers=JPEG, timeout=60).json()
        b = httpx.post(f"{single.url}/classify?top_k=5", content=data, headers=JPEG, timeout=60).json()
        pa, pb = a["results"][0]["predictions"], b["results"][0]["predictions"]
        assert [p["index"] for p in pa] == [p["index"] for p in pb], name
        assert np.allclose([p["score"] for p in pa], [p["score"] for p in pb], atol=1e-5), name


def test_answers_match_the_single_process_service(split: Server, single: Server, photos: dict[str, bytes]) -> None:
    """Front ends decode and preprocess (pixels through shared memory): the same answer as one process."""
    assert_same_answers(split.url, single, photos)


def _grpc_port(srv: Server) -> int:
    return int(re.search(r"gRPC \(KServe v2, grpc.health.v1\) on port (\d+)", srv.logs()).group(1))  # type: ignore[union-attr]


def test_model_statistics_are_the_engines_whichever_front_end_answered(split: Server,
                                                                          photos: dict[str, bytes]) -> None:
    """gRPC ModelStatistics counts every front end's requests (the engine keeps them), not one front end's."""
    import tritonclient.grpc as tg

    c = tg.InferenceServerClient(f"127.0.0.1:{_grpc_port(split)}")

    def count() -> int:
        return sum(s.inference_count for s in c.get_inference_statistics("resnet18").model_stats)

    before = count()
    for _ in range(16):  # fresh connections: both front ends answer some (SO_REUSEPORT)
        r = httpx.post(f"{split.url}/classify", content=photos["coffee.jpg"],
                       headers={**JPEG, "Connection": "close"}, timeout=60)
        assert r.status_code == 200, r.text
    assert count() - before == 16
    c.close()


def test_encoded_images_sent_to_the_engine_answer_the_same(model_repo: Path, tmp_path: Path, single: Server,
                                                            photos: dict[str, bytes]) -> None:
    """``--ipc-payload bytes`` (what a GPU-decode model gets): the JPEG bytes travel, the engine admits,
    decodes and runs them (the same client protocol, over its in-process transport): the same answers as
    one process, and a bad image is still the request's 400 naming it."""
    srv = start_server(model_repo, tmp_path, "--processes", "2", "--ipc-payload", "bytes")
    try:
        assert_same_answers(srv.url, single, photos)
        files = [("file", ("ok.jpg", photos["coffee.jpg"], "image/jpeg")), ("file", ("bad.jpg", b"nope", "image/jpeg"))]
        bad = httpx.post(f"{srv.url}/classify", files=files, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("image 1 (bad.jpg)"), bad.text
    finally:
        srv.stop()


def test_v2_and_the_admin_api_reach_the_engine(split: Server, photos: dict[str, bytes]) -> None:
    with httpx.Client(base_url=split.url, timeout=60) as c:
        meta = c.get("/v2/models/resnet18").json()
        assert meta["inputs"][0]["shape"] == [-1, 3, 224, 224]
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 224, 224],
                            "data": x.ravel().tolist()}]}
        r = c.post("/v2/models/resnet18/infer", json=body)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 1000], r.text
        assert c.post("/models/resnet18/unload").json()["state"] == "unloaded"
        wait_for("every front end to see the unload",
                 lambda: c.post("/classify", content=photos["coffee.jpg"], headers=JPEG).status_code == 503)
        assert c.post("/models/resnet18/load").json()["state"] == "ready"
        wait_for("the model to serve again", lambda: all(
            httpx.post(f"{split.url}/classify", content=photos["coffee.jpg"], headers=JPEG, timeout=60).status_code
            == 200 for _ in range(4)))
        bad = c.post("/v2/models/resnet18/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                       "shape": [1, 3, 2, 2], "data": [0.0] * 12}]})
        assert bad.status_code == 400 and "expected" in bad.json()["error"]


async def _load(url: str, data: bytes, seconds: float, clients: int, running: asyncio.Event | None = None
                ) -> list[tuple[float, float, object]]:
    """``clients`` closed loops of /classify for ``seconds``: (start, duration, status or error code).
    ``running`` is set once ``clients`` answers have come back (the load is under way)."""
    out: list[tuple[float, float, object]] = []
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        async def loop() -> None:
            while time.monotonic() < end:
                t = time.monotonic()
                try:
                    r = await c.post("/classify", content=data, headers=JPEG)
                    what: object = r.status_code if r.status_code == 200 else (r.status_code, r.json()["error"]["code"])
                except httpx.TransportError as e:
                    what = type(e).__name__
                out.append((t, time.monotonic() - t, what))
                if running is not None and len(out) >= clients:
                    running.set()
        await asyncio.gather(*(loop() for _ in range(clients)))
    return out


def test_an_engine_killed_fails_in_flight_requests_at_once_and_comes_back(
    split: Server, photos: dict[str, bytes]
) -> None:
    engine, fronts = pids(split, "engine")[-1], [pids(split, f"front-end-{i}")[-1] for i in (0, 1)]

    async def scenario() -> tuple[list[tuple[float, float, object]], float, str]:
        running = asyncio.Event()
        load = asyncio.create_task(_load(split.url, photos["coffee.jpg"], 4.0, 6, running))
        await running.wait()  # answers are coming back and other requests are in flight
        killed = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=split.url, timeout=5) as c:
            while (r := await c.get("/health/ready")).status_code == 200:  # noqa: ASYNC110 - polling a server
                await asyncio.sleep(0.01)
        return await load, killed, r.json()["error"]["message"]

    results, killed, reason = asyncio.run(scenario())
    assert "engine process is down" in reason
    outcomes = Counter(what for _, _, what in results)
    assert set(outcomes) <= {200, (503, "engine_unavailable"), (503, "model_not_ready")}, outcomes
    assert outcomes[200] > 0 and outcomes[(503, "engine_unavailable")] > 0, outcomes
    # every request in flight at the kill was answered, none left hanging until the client's 30 s timeout
    # (well under a second here; the bound is loose so a busy machine cannot fail it)
    in_flight = [t + d - killed for t, d, _ in results if t < killed < t + d]
    assert in_flight and max(in_flight) < 10.0, in_flight
    wait_for("a new engine", lambda: len(pids(split, "engine")) == 2)
    wait_for("readiness after the restart", lambda: ready(split), 120)
    r = httpx.post(f"{split.url}/classify", content=photos["coffee.jpg"], headers=JPEG, timeout=60)
    assert r.status_code == 200
    assert [pids(split, f"front-end-{i}")[-1] for i in (0, 1)] == fronts  # the front ends never restarted
    assert re.search(rf"engine \(pid {engine}\) exited with -9", split.logs())


def test_a_front_end_killed_is_restarted_and_the_other_keeps_serving(
    split: Server, photos: dict[str, bytes]
) -> None:
    victim = pids(split, "front-end-1")[-1]
    os.kill(victim, signal.SIGKILL)
    wait_for("the supervisor to restart it", lambda: len(pids(split, "front-end-1")) == 2)
    # meanwhile and after: fresh connections land on a listening front end and are answered
    for _ in range(10):
        r = httpx.post(f"{split.url}/classify", content=photos["coffee.jpg"], headers=JPEG, timeout=60)
        assert r.status_code == 200
    assert re.search(rf"front-end-1 \(pid {victim}\) exited with -9", split.logs())
    wait_for("the new front end", lambda: split.logs().count("Application startup complete.") >= 3)


def test_sigterm_drains_the_front_ends_then_stops_the_engine(model_repo: Path, tmp_path: Path) -> None:
    srv = start_server(model_repo, tmp_path, "--processes", "2")
    wait_for("both front ends", lambda: srv.logs().count("Application startup complete.") == 2)
    assert srv.stop() == 0
    logs = srv.logs()
    assert logs.count("Finished server process") == 2
    assert logs.rindex("Finished server process") < logs.rindex("engine process"), logs  # "... stopping"
    assert re.search(r"engine process \d+ stopping", logs), logs
    assert not list(Path("/dev/shm").glob(f"imgserve-ipc-*/frontend-{pids(srv, 'front-end-0')[-1]}.arena"))


def _favour_class(model: Path, index: int) -> None:
    """Rewrite ``model`` (resnet18's ONNX file) in place so that class ``index`` wins for every image."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name == "fc.bias":
            bias = numpy_helper.to_array(t).copy()
            bias[index] += 1e4
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(bias, "fc.bias"))
    onnx.save(m, model)


def _top1_on_fresh_connections(url: str, data: bytes, n: int) -> Counter[object]:
    """Top-1 of ``n`` requests, each on a new connection: the kernel spreads new connections over the front
    ends (SO_REUSEPORT), so every front end answers some (all 32 on one of two: a 2^-31 chance)."""
    out: Counter[object] = Counter()
    for _ in range(n):
        r = httpx.post(f"{url}/classify?top_k=1", content=data, headers={**JPEG, "Connection": "close"}, timeout=60)
        out[r.json()["results"][0]["predictions"][0]["index"] if r.status_code == 200 else r.status_code] += 1
    return out


def test_a_reload_through_one_front_end_refreshes_every_front_ends_cache(
        model_repo: Path, tmp_path: Path, photos: dict[str, bytes]) -> None:
    """New weights in place, the same version reloaded through the admin API: whichever front end reloaded
    it, no front end answers from a result it cached of the old weights (issue 25's stale-cache bug)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    srv = start_server(repo, tmp_path, "--processes", "2", "--cache-size", "64", "--compile-cache", "off")
    try:
        wait_for("both front ends", lambda: srv.logs().count("Application startup complete.") == 2)
        data = photos["coffee.jpg"]
        before = _top1_on_fresh_connections(srv.url, data, 32)  # every front end caches the old answer
        assert len(before) == 1 and 200 not in before, before
        old = next(iter(before))
        new = (int(old) + 500) % 1000  # type: ignore[call-overload]
        _favour_class(repo / "resnet18" / "1" / "model.onnx", new)
        reload = httpx.post(f"{srv.url}/models/resnet18/load", timeout=120)
        assert reload.status_code == 200 and reload.json()["state"] == "ready", reload.text
        after = _top1_on_fresh_connections(srv.url, data, 32)
    finally:
        srv.stop()
    assert after == Counter({new: 32}), f"answers after the reload (top-1 was {old}, the new weights say {new})"
