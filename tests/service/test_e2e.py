"""End to end through a real uvicorn on a loopback port with a real exported model.

Where a test needs the runtime busy (a full queue, requests in flight at SIGTERM) it holds it with the
fault file's ``hang`` mode and lets go once the event it waits for has happened; where it needs
requests to share a batch, batches close on size, not on timing. Waiting is polling with a deadline.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.service.conftest import Server, start_server

pytestmark = pytest.mark.slow


def post_raw(c: httpx.Client, data: bytes, ctype: str = "image/jpeg", **params: object) -> httpx.Response:
    return c.post("/classify", content=data, headers={"Content-Type": ctype}, params=params)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout`` s (a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.02)


def set_fault(path: Path, mode: str) -> None:
    """The fault file's mode, written atomically (a new inode: the service sees every change)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(mode)
    os.replace(tmp, path)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_single_image_raw_body(server: Server, photos: dict[str, bytes]) -> None:
    with server.client() as c:
        r = post_raw(c, photos["chelsea.jpg"], top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "resnet18" and body["version"] == "1"
    (res,) = body["results"]
    preds = res["predictions"]
    assert len(preds) == 3
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert all(isinstance(p["label"], str) and 0 <= p["index"] < 1000 for p in preds)
    assert "random weights" in body["warning"]
    assert re.fullmatch(r"queue;dur=[\d.]+, preprocess;dur=[\d.]+, infer;dur=[\d.]+", r.headers["server-timing"])
    assert r.headers["x-request-id"]


def test_multi_image_multipart_keeps_order(server: Server, photos: dict[str, bytes]) -> None:
    files = [("file", (n, d, "image/jpeg")) for n, d in photos.items()]
    with server.client() as c:
        r = c.post("/classify", files=files, params={"top_k": 1}, headers={"X-Request-ID": "abc-123"})
        singles = [post_raw(c, d, top_k=1).json()["results"][0]["predictions"] for d in photos.values()]
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-123"
    results = r.json()["results"]
    assert [x["filename"] for x in results] == list(photos)
    # the same image gives the same answer alone or in a multi-image request
    for got, alone in zip(results, singles, strict=True):
        assert got["predictions"][0]["index"] == alone[0]["index"]
        assert got["predictions"][0]["score"] == pytest.approx(alone[0]["score"], abs=1e-4)


def test_png_and_sniffed_octet_stream(server: Server) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    with server.client() as c:
        assert post_raw(c, buf.getvalue(), "image/png").status_code == 200
        assert post_raw(c, buf.getvalue(), "application/octet-stream").status_code == 200


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("garbage", 400, "bad_image"),
        ("truncated", 400, "bad_image"),
        ("empty", 400, "bad_image"),
        ("unknown_model", 404, "model_not_found"),
        ("unknown_version", 404, "model_not_found"),
        ("body_too_large", 413, "payload_too_large"),
        ("too_many_pixels", 413, "payload_too_large"),
        ("too_many_images", 413, "payload_too_large"),
        ("media_type", 415, "unsupported_media_type"),
        ("top_k_zero", 422, "bad_parameter"),
        ("top_k_too_big", 422, "bad_parameter"),
        ("bad_timeout", 422, "bad_parameter"),
        ("no_file_part", 422, "bad_parameter"),
        ("no_key", 401, "unauthorized"),
        ("wrong_key", 401, "unauthorized"),
    ],
)
def test_error_table(server: Server, photos: dict[str, bytes], case: str, status: int, code: str) -> None:
    jpg = photos["coffee.jpg"]
    with server.client() as c:
        if case == "garbage":
            r = post_raw(c, b"this is not an image")
        elif case == "truncated":
            r = post_raw(c, jpg[: len(jpg) // 3])
        elif case == "empty":
            r = post_raw(c, b"")
        elif case == "unknown_model":
            r = post_raw(c, jpg, model="nope")
        elif case == "unknown_version":
            r = post_raw(c, jpg, version="7")
        elif case == "body_too_large":
            r = post_raw(c, b"\xff" * (1024 * 1024 + 10))
        elif case == "too_many_pixels":  # a 3000x3000 PNG is small in bytes, over 4 Mpx
            buf = io.BytesIO()
            Image.new("L", (3000, 3000)).save(buf, "PNG")
            r = post_raw(c, buf.getvalue(), "image/png")
        elif case == "too_many_images":
            r = c.post("/classify", files=[("file", (f"{i}.jpg", jpg, "image/jpeg")) for i in range(5)])
        elif case == "media_type":
            r = post_raw(c, b"{}", "application/json")
        elif case == "top_k_zero":
            r = post_raw(c, jpg, top_k=0)
        elif case == "top_k_too_big":
            r = post_raw(c, jpg, top_k=1001)
        elif case == "bad_timeout":
            r = c.post("/classify", content=jpg, headers={"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": "-5"})
        elif case == "no_file_part":
            r = c.post("/classify", files=[("image", ("a.jpg", jpg, "image/jpeg"))])
        elif case == "no_key":
            r = httpx.post(f"{server.url}/classify", content=jpg, headers={"Content-Type": "image/jpeg"})
        else:
            r = httpx.post(f"{server.url}/classify", content=jpg,
                           headers={"Content-Type": "image/jpeg", "Authorization": "Bearer nope"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert len(err["message"]) > 15  # says what and how to fix


def test_bad_part_names_its_index_and_spares_others(server: Server, photos: dict[str, bytes]) -> None:
    good = photos["chelsea.jpg"]
    with server.client() as c, ThreadPoolExecutor(8) as pool:
        others = [pool.submit(post_raw, c, good) for _ in range(6)]
        files = [("file", ("ok.jpg", good, "image/jpeg")), ("file", ("bad.jpg", b"garbage!", "image/jpeg"))]
        bad = c.post("/classify", files=files)
        assert all(f.result().status_code == 200 for f in others)
    assert bad.status_code == 400
    assert "image 1 (bad.jpg)" in bad.json()["error"]["message"]


def test_concurrent_requests_share_batches_and_metrics(model_repo: Path, tmp_path: Path,
                                                      photos: dict[str, bytes]) -> None:
    # Batches close at a preferred size (4 or 8) or after 5 s, never because the runtime is idle: with 16
    # requests in flight they share batches however fast or busy the machine (only a tail waits the 5 s).
    s = start_server(model_repo, tmp_path, "--dispatch-when-idle", "false", "--max-queue-delay-ms", "5000")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            before = c.get("/metrics").text
            imgs = list(photos.values())
            with ThreadPoolExecutor(16) as pool:
                # distinct bytes per request so that nothing could answer them from a cache
                rs = list(pool.map(lambda i: post_raw(c, imgs[i % 3] + bytes([i]), top_k=1), range(32)))
            assert all(r.status_code == 200 for r in rs)
            text = c.get("/metrics").text
    finally:
        s.stop()
    batches = metric(text, "inference_batch_size_count") - metric(before, "inference_batch_size_count")
    images = metric(text, "inference_batch_size_sum") - metric(before, "inference_batch_size_sum")
    assert images == 32
    assert batches < 32, "no two requests shared a batch"
    for name in [
        "inference_requests_total", "inference_images_total", "inference_request_duration_seconds_bucket",
        "inference_queue_duration_seconds_bucket", "inference_preprocess_duration_seconds_bucket",
        "inference_compute_duration_seconds_bucket", "inference_batch_size_bucket", "inference_queue_depth",
        "inference_inflight_requests", "inference_model_ready",
    ]:
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    ready = re.findall(r'^inference_model_ready\{model="resnet18",runtime="openvino-cpu (?:bf16|fp32)",version="1"\} '
                       r'1\.0$', text, re.M)
    assert len(ready) == 1, "the model_ready metric names the runtime and the precision in use"
    assert metric(text, "inference_requests_total", model="resnet18", status="200") >= 32


def test_result_cache_hits(server: Server, photos: dict[str, bytes]) -> None:
    data = photos["astronaut.jpg"] + b"cache-test"
    with server.client() as c:
        first = post_raw(c, data, top_k=2).json()
        before = metric(c.get("/metrics").text, "inference_cache_requests_total", result="hit")
        second = post_raw(c, data, top_k=2).json()
        after = metric(c.get("/metrics").text, "inference_cache_requests_total", result="hit")
    assert after == before + 1
    assert first["results"] == second["results"]


def test_models_endpoints(server: Server) -> None:
    with server.client() as c:
        listing = c.get("/models").json()["models"]
        one = c.get("/models/resnet18").json()
        missing = c.get("/models/nope")
    assert [m["name"] for m in listing] == ["resnet18"]
    # --runtime auto on a CPU: OpenVINO, at its default precision for this CPU (BF16 where it has it)
    assert one["runtime"] == "openvino-cpu" and one["device"] == "cpu" and one["precision"] in ("fp32", "bf16")
    assert one["runtime_choice"].startswith("auto: ") and one["weights"] == "random" and one["state"] == "ready"
    assert one["input"]["shape"] == [3, 224, 224] and one["batching"]["max_batch_size"] == 8
    assert one["batching"]["preferred_batch_sizes"] == [4, 8]
    assert missing.status_code == 404


def test_reload_and_unload_under_traffic(server: Server, photos: dict[str, bytes]) -> None:
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with server.client() as c:
            i = 0
            while not stop.is_set():
                i += 1
                statuses.append(post_raw(c, photos["coffee.jpg"] + i.to_bytes(4, "big"), top_k=1).status_code)

    with server.client() as c, ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(traffic) for _ in range(4)]
        try:
            wait_for(lambda: len(statuses) >= 4, "traffic under way")
            r = c.post("/models/resnet18/load")
            assert r.status_code == 200, r.text
            reloaded = len(statuses)
            wait_for(lambda: len(statuses) >= reloaded + 4, "traffic after the reload")
        finally:
            stop.set()
            for w in workers:
                w.result()
        assert set(statuses) == {200}, f"failures during reload: {statuses}"
        assert c.get("/health/ready").status_code == 200

        assert c.post("/models/resnet18/unload").status_code == 200
        r = post_raw(c, photos["coffee.jpg"])
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert "Retry-After" in r.headers
        assert c.get("/models/resnet18").json()["state"] == "unloaded"
        assert c.post("/models/resnet18/load").status_code == 200
        assert post_raw(c, photos["coffee.jpg"]).status_code == 200
        assert c.post("/models/nope/load").status_code == 404


def test_open_endpoints_need_no_key(server: Server) -> None:
    assert httpx.get(f"{server.url}/health/live").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert httpx.get(f"{server.url}/models").status_code == 401


def test_queue_full_and_deadline(model_repo: Path, tmp_path: Path, photos: dict[str, bytes]) -> None:
    """A tiny queue sheds with 503 + Retry-After; a short deadline gives 504 (admission off).

    The runtime is held on the first request (fault file: hang) while 8 more arrive: at most 3 fit (one
    batch of 1 waiting for the runtime, the queue of 2), so at least 5 are shed, and they are the only
    ones that can be answered before the runtime is let go."""
    fault = tmp_path / "fault"
    set_fault(fault, "ok")
    s = start_server(model_repo, tmp_path, "--max-queue-size", "2", "--max-batch-size", "1",
                     "--no-admission-control", "--max-queue-delay-ms", "0", "--fault-file", str(fault))
    try:
        data = photos["chelsea.jpg"]
        with httpx.Client(base_url=s.url, timeout=60) as c, ThreadPoolExecutor(9) as pool:
            set_fault(fault, "hang")
            held = pool.submit(post_raw, c, data)
            wait_for(lambda: "hanging a batch" in s.logs(), "the first request held in the runtime")
            rest = [pool.submit(post_raw, c, data + bytes([i])) for i in range(8)]
            try:
                wait_for(lambda: sum(f.done() for f in rest) >= 5, "5 requests shed while the runtime is held")
            finally:
                set_fault(fault, "ok")
            rs = [held.result(), *(f.result() for f in rest)]
            codes = [r.status_code for r in rs]
            assert set(codes) == {200, 503} and codes.count(503) >= 5, codes
            shed = next(r for r in rs if r.status_code == 503)
            assert shed.json()["error"]["code"] == "queue_full" and int(shed.headers["Retry-After"]) >= 1

            def late(i: int) -> httpx.Response:
                return c.post("/classify", content=data + bytes([i]),
                              headers={"Content-Type": "image/jpeg", "X-Request-Timeout-Ms": "1"})

            rs = list(pool.map(late, range(2)))
            assert {r.status_code for r in rs} == {504}, [r.text for r in rs]
            assert rs[0].json()["error"]["code"] == "deadline_exceeded"
            assert c.get("/health/ready").status_code == 200  # still serving everyone else
    finally:
        s.stop()


def test_readiness_waits_for_warmup_and_sigterm_drains(model_repo: Path, tmp_path: Path,
                                                       photos: dict[str, bytes]) -> None:
    # The load stalls until the fault file changes (slow_load): readiness must say 503 meanwhile.
    fault = tmp_path / "fault"
    set_fault(fault, "slow_load:600")
    s = start_server(model_repo, tmp_path, "--max-batch-size", "32", "--shutdown-delay-s", "1.5",
                     "--fault-file", str(fault), wait_ready=False)
    try:
        r = httpx.get(f"{s.url}/health/ready", timeout=30)
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert httpx.get(f"{s.url}/health/live", timeout=30).status_code == 200
        set_fault(fault, "ok")  # the load goes on
        wait_for(lambda: httpx.get(f"{s.url}/health/ready", timeout=30).status_code == 200, "ready")
        with httpx.Client(base_url=s.url, timeout=60) as c, ThreadPoolExecutor(8) as pool:
            set_fault(fault, "hang")  # the 8 requests stay in flight until the drain has been seen
            inflight: list[Future[httpx.Response]] = []
            try:
                inflight = [pool.submit(post_raw, c, photos["coffee.jpg"] + bytes([i])) for i in range(8)]
                wait_for(lambda: inflight_gauge(c) >= 9, "8 requests in flight (and this /metrics)")
                s.proc.send_signal(15)
                seen: list[httpx.Response] = []
                wait_for(lambda: seen.append(c.get("/health/ready")) or seen[-1].status_code == 503,
                         "readiness 503 after SIGTERM", 30)  # the listener stays open for the 1.5 s delay
                assert "shutting down" in seen[-1].text, seen[-1].text
            finally:
                set_fault(fault, "ok")
            assert [f.result().status_code for f in inflight] == [200] * 8
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly
        assert s.proc.wait(60) in (0, -15)
        assert "Application shutdown complete" in s.logs()
    finally:
        s.stop()


def inflight_gauge(c: httpx.Client) -> float:
    return metric(c.get("/metrics").text, "inference_inflight_requests")


def test_request_input_does_not_mint_metric_labels(server: Server, photos: dict[str, bytes]) -> None:
    with server.client() as c:
        for i in range(3):
            assert post_raw(c, photos["coffee.jpg"], model=f"attacker-{i}").status_code == 404
        assert post_raw(c, photos["coffee.jpg"], version="999").status_code == 404
        text = c.get("/metrics").text
    assert "attacker-" not in text and 'version="999"' not in text
    assert metric(text, "inference_requests_total", model="_unknown", status="404") >= 3


def test_unusable_tensorrt_plan_falls_back_to_its_onnx_model(model_repo: Path, tmp_path: Path,
                                                             photos: dict[str, bytes]) -> None:
    """A resnet18_trt plan that cannot run here (no TensorRT/GPU) must not block readiness: its
    requests are served by resnet18 (docs/reference/repository-format.md)."""
    import shutil

    from modelrepo.config import read_config, set_params, write_config

    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    trt = repo / "resnet18_trt"
    (trt / "1").mkdir(parents=True)
    (trt / "1" / "model.plan").write_bytes(b"not a real plan")
    shutil.copy(model_repo / "resnet18" / "labels.txt", trt / "labels.txt")
    cfg = read_config(model_repo / "resnet18")
    cfg.name, cfg.platform = "resnet18_trt", "tensorrt_plan"
    set_params(cfg, {"tensorrt.compute_capability": "9.0", "tensorrt.version": "10.0.0",
                     "serve.fallback_model": "resnet18"})
    write_config(trt, cfg)

    s = start_server(repo, tmp_path)
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            assert c.get("/health/ready").status_code == 200
            r = post_raw(c, photos["coffee.jpg"], model="resnet18_trt")
            assert r.status_code == 200 and r.json()["model"] == "resnet18"
            desc = c.get("/models/resnet18_trt").json()
            assert desc["state"].startswith("fallback") and desc["served_by"] == "resnet18"
        assert "served by resnet18" in s.logs()
    finally:
        s.stop()
