"""Faults in production, injected: runtime errors, hangs, garbage logits, corrupt model files, reloads
under traffic. Unit tests of the output checks and the batcher's watchdog, then real servers on loopback
driven by ``--fault-file`` (service/runtimes/faults.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.batching import Batcher, BatcherConfig, StepResult, stacked
from service.errors import ModelNotReady, RuntimeHung
from service.guards import BadOutput, check_rows, checked
from service.runtimes.faults import FaultSwitch, FaultyRuntime
from tests.service.conftest import Server, start_server

# -- output checks -------------------------------------------------------------------------------


def test_check_rows_accepts_finite_logits_of_the_right_shape() -> None:
    check_rows(np.zeros((3, 10), np.float32), 3, 10)
    check_rows(np.empty((0, 0), np.float32), 0, 10)  # every item failed alone
    check_rows(np.zeros((2, 7), np.float32), 2, 0)  # class count unknown: columns not checked


@pytest.mark.parametrize(
    ("rows", "expected", "classes", "words"),
    [
        (np.array([[0.0, np.nan]]), 1, 2, "NaN/Inf logits in 1 of 1 rows"),
        (np.array([[0.0, 1.0], [np.inf, 0.0], [-np.inf, 0.0]]), 3, 2, "NaN/Inf logits in 2 of 3 rows"),
        (np.zeros((2, 10)), 3, 10, "shape (2, 10), expected (3, 10)"),
        (np.zeros((3, 9)), 3, 10, "shape (3, 9), expected (3, 10)"),
        (np.zeros(3), 3, 10, "shape (3,)"),
    ],
)
def test_check_rows_refuses_garbage(rows: np.ndarray, expected: int, classes: int, words: str) -> None:
    with pytest.raises(BadOutput, match=re.escape(words)):
        check_rows(rows, expected, classes)


def test_checked_counts_items_that_failed_alone() -> None:
    def step(items: list[Any]) -> StepResult:
        return StepResult(np.zeros((len(items) - 1, 4), np.float32), {0: ValueError("bad jpeg")})

    assert checked(step, 4)([1, 2, 3]).rows.shape == (2, 4)
    with pytest.raises(BadOutput, match="shape"):
        checked(step, 5)([1, 2, 3])


# -- the batcher's watchdog ----------------------------------------------------------------------


class Gate:
    """A fake instance that hangs while its gate is closed, else returns row i = [input]."""

    def __init__(self, hang: bool) -> None:
        self.open = threading.Event()
        if not hang:
            self.open.set()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.open.wait(10)
        return batch.reshape(batch.shape[0], -1)


def one(v: float) -> list[np.ndarray]:
    return [np.full((1,), v, np.float32)]


async def test_watchdog_retires_a_hung_instance_and_fails_fast() -> None:
    hung = Gate(hang=True)
    reasons: list[str] = []
    b = Batcher("fake", stacked(hung.infer), BatcherConfig(max_batch_size=1, max_queue_delay_s=0),
                watchdog_s=0.2, on_unhealthy=reasons.append)
    b.start()
    try:
        t0 = time.monotonic()
        first = b.submit(one(1), None)
        queued = b.submit(one(2), None)  # behind the hung batch: fails too, never waits forever
        with pytest.raises(RuntimeHung) as e:
            await first[0]
        assert 0.15 < time.monotonic() - t0 < 2
        assert e.value.status == 503 and e.value.code == "runtime_unhealthy" and "Retry-After" in e.value.headers
        with pytest.raises(ModelNotReady):
            await asyncio.wait_for(queued[0], 2)
        assert len(reasons) == 1 and "hung" in reasons[0] and "0 of 1 instances left" in reasons[0]
        assert b.retired == {0}
        t0 = time.monotonic()
        with pytest.raises(ModelNotReady, match="hung"):  # admission refuses at once
            await b.run(one(3), None)
        assert time.monotonic() - t0 < 0.1
        t0 = time.monotonic()
        await b.drain_and_stop()  # does not join the stuck thread
        assert time.monotonic() - t0 < 1
    finally:
        hung.open.set()


async def test_watchdog_keeps_the_healthy_instances_serving() -> None:
    hung, healthy = Gate(hang=True), Gate(hang=False)
    reasons: list[str] = []
    b = Batcher("fake", [stacked(hung.infer), stacked(healthy.infer)],
                BatcherConfig(max_batch_size=1, max_queue_delay_s=0), watchdog_s=0.2, on_unhealthy=reasons.append)
    b.start()
    try:
        outs = await asyncio.gather(*(b.run(one(i), None) for i in range(6)), return_exceptions=True)
        hung_errors = [o for o in outs if isinstance(o, RuntimeHung)]
        assert len(hung_errors) == 1, outs  # only the batch on the hung instance fails
        for i, o in enumerate(outs):  # every other request got its own row from the healthy instance
            assert isinstance(o, RuntimeHung) or float(o[0][0][0]) == i
        assert b.retired == {0} and "1 of 2 instances left" in reasons[0]
        assert float((await b.run(one(9), None))[0][0][0]) == 9.0  # the healthy one keeps serving
        await b.drain_and_stop()
    finally:
        hung.open.set()


async def test_watchdog_off_and_slow_batches_under_it_are_fine() -> None:
    slow = Gate(hang=True)
    threading.Timer(0.3, slow.open.set).start()
    b = Batcher("fake", stacked(slow.infer), BatcherConfig(max_batch_size=1), watchdog_s=0)
    b.start()
    assert float((await b.run(one(4), None))[0][0][0]) == 4.0
    await b.drain_and_stop()


# -- the fault runtime without a server ----------------------------------------------------------


def set_mode(path: Path, mode: str) -> None:
    """Atomically (a new inode: the switch sees the change however coarse the clock)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(mode)
    os.replace(tmp, path)


class Identity:
    name, label, device_kind, precision = "fake", "fake-cpu", "cpu", "fp32"

    def load(self, spec: object) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.ones((batch.shape[0], 3), np.float32)

    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None: ...

    def close(self) -> None: ...


def test_fault_switch_modes(tmp_path: Path) -> None:
    path = tmp_path / "fault"
    rt = FaultyRuntime(Identity(), FaultSwitch(path))  # type: ignore[arg-type]
    x = np.zeros((2, 1), np.float32)
    assert rt.infer(x).shape == (2, 3)  # no file: ok
    set_mode(path, "raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        rt.infer(x)
    set_mode(path, "nan")
    assert np.isnan(rt.infer(x)).sum() == 1
    set_mode(path, "shape")
    assert rt.infer(x).shape == (2, 2)
    set_mode(path, "once:raise")
    with pytest.raises(RuntimeError):
        rt.infer(x)
    assert rt.infer(x).shape == (2, 3)  # once: back to ok until the file changes
    set_mode(path, "bogus")
    assert rt.infer(x).shape == (2, 3)
    assert not hasattr(rt, "infer_tensor")  # the wrapper offers only what the runtime has
    set_mode(path, "hang")
    threading.Timer(0.3, set_mode, (path, "ok")).start()
    t0 = time.monotonic()
    assert rt.infer(x).shape == (2, 3)  # hangs until the file changes
    assert 0.25 < time.monotonic() - t0 < 3


# -- real servers --------------------------------------------------------------------------------


def copy_model(src_repo: Path, repo: Path, name: str, src: str = "resnet18") -> Path:
    from service.repository import read_config, write_config

    shutil.copytree(src_repo / src, repo / name)
    cfg = read_config(repo / name)
    cfg.name = name
    write_config(repo / name, cfg)
    return repo / name


def post(c: httpx.Client, data: bytes, model: str = "resnet18", **kw: Any) -> httpx.Response:
    return c.post("/classify", content=data, headers={"Content-Type": "image/jpeg"},
                  params={"model": model, "top_k": 1}, **kw)


def wait_started(s: Server, names: list[str]) -> None:
    """Until the startup load has finished and ``names`` are ready (readiness may stay 503 for others)."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=s.url, timeout=10) as c:
        while time.monotonic() < deadline:
            msg = c.get("/health/ready").text
            if "loading" not in msg and "pending" not in msg:
                states = {m["name"]: m["state"] for m in c.get("/models").json()["models"]}
                if all(states.get(n) == "ready" for n in names):
                    return
            time.sleep(0.1)
    raise AssertionError(f"models {names} not ready in time:\n{s.logs()}")


@pytest.fixture(scope="module")
def faulty(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """resnet18 and a copy, ``second``, plus ``broken`` (a corrupt model.onnx), under --fault-file."""
    tmp = tmp_path_factory.mktemp("faults")
    repo = tmp / "repo"
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    copy_model(model_repo, repo, "second")
    broken = copy_model(model_repo, repo, "broken")
    (broken / "1" / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 100)
    fault = tmp / "fault"
    set_mode(fault, "ok")
    s = start_server(repo, tmp, "--fault-file", str(fault), "--max-batch-size", "2", wait_ready=False)
    try:
        wait_started(s, ["resnet18", "second"])
        yield s, fault
    finally:
        s.stop()


@pytest.fixture
def fault(faulty: tuple[Server, Path]) -> Iterator[Path]:
    yield faulty[1]
    set_mode(faulty[1], "ok")


def test_fault_injection_is_announced(faulty: tuple[Server, Path]) -> None:
    assert "FAULT INJECTION is on for model resnet18" in faulty[0].logs()


def test_runtime_exception_fails_only_that_batch(faulty: tuple[Server, Path], fault: Path,
                                                 photos: dict[str, bytes]) -> None:
    with httpx.Client(base_url=faulty[0].url, timeout=30) as c:
        set_mode(fault, "raise")
        r = post(c, photos["coffee.jpg"])
        assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed", r.text
        assert "injected fault" in r.json()["error"]["message"]
        set_mode(fault, "ok")
        assert post(c, photos["coffee.jpg"]).status_code == 200
        set_mode(fault, "once:raise")
        assert post(c, photos["coffee.jpg"]).status_code == 500
        assert post(c, photos["coffee.jpg"]).status_code == 200  # the next batch serves


@pytest.mark.parametrize(("mode", "words"), [("nan", "runtime returned NaN/Inf logits"),
                                             ("shape", "runtime returned logits of shape (1, 999)")])
def test_garbage_logits_fail_with_a_clear_error(faulty: tuple[Server, Path], fault: Path, photos: dict[str, bytes],
                                                mode: str, words: str) -> None:
    with httpx.Client(base_url=faulty[0].url, timeout=30) as c:
        set_mode(fault, mode)
        for _ in range(3):
            r = post(c, photos["chelsea.jpg"])
            assert r.status_code == 500, r.text  # never a 200 with garbage
            err = r.json()["error"]
            assert err["code"] == "inference_failed" and words in err["message"]
        set_mode(fault, "ok")
        assert post(c, photos["chelsea.jpg"]).status_code == 200


def test_corrupt_model_is_not_ready_with_its_reason_while_others_serve(faulty: tuple[Server, Path],
                                                                        photos: dict[str, bytes]) -> None:
    with httpx.Client(base_url=faulty[0].url, timeout=30) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 503
        msg = ready.json()["error"]["message"]
        assert msg.startswith("broken: failed: ") and "resnet18" not in msg and "second" not in msg
        states = {m["name"]: m["state"] for m in c.get("/models").json()["models"]}
        assert states["broken"] == msg.removeprefix("broken: ")
        assert states["resnet18"] == states["second"] == "ready"
        r = post(c, photos["coffee.jpg"], model="broken")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert "failed" in r.json()["error"]["message"]
        assert post(c, photos["coffee.jpg"]).status_code == 200
        assert post(c, photos["coffee.jpg"], model="second").status_code == 200


@pytest.mark.slow
def test_reload_and_unload_under_continuous_traffic(faulty: tuple[Server, Path], photos: dict[str, bytes]) -> None:
    server = faulty[0]
    stop = threading.Event()
    statuses: list[int] = []
    failures: list[str] = []

    def traffic() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                r = post(c, photos["coffee.jpg"])
                statuses.append(r.status_code)
                if not r.is_success:
                    failures.append(f"{r.status_code} {r.text}")

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            time.sleep(0.3)
            for _ in range(3):
                assert c.post("/models/resnet18/load").status_code == 200
            during_a = len(statuses)
            assert c.post("/models/second/unload").status_code == 200
            assert post(c, photos["coffee.jpg"], model="second").status_code == 503
            assert c.post("/models/second/load").status_code == 200
            assert post(c, photos["coffee.jpg"], model="second").status_code == 200
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join()
    print(f"reload under traffic: {len(statuses)} requests ({during_a} during 3 reloads of resnet18), "
          f"{len(failures)} non-2xx")
    assert during_a > 10 and len(statuses) > during_a
    assert failures == [], f"{len(failures)} of {len(statuses)} requests failed: {failures}"


@pytest.mark.slow
def test_hung_runtime_is_declared_unhealthy_then_reload_recovers(model_repo: Path, tmp_path: Path,
                                                                  photos: dict[str, bytes]) -> None:
    fault = tmp_path / "fault"
    set_mode(fault, "ok")
    s = start_server(model_repo, tmp_path, "--fault-file", str(fault), "--watchdog-s", "1",
                     "--max-batch-size", "1")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            set_mode(fault, "hang")
            t0 = time.monotonic()
            r = post(c, photos["coffee.jpg"])
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["error"]["code"] == "runtime_unhealthy", r.text
            assert "Retry-After" in r.headers
            assert 0.9 < took < 5, f"failed after {took:.1f} s, not at the 1 s watchdog"
            ready = c.get("/health/ready")
            assert ready.status_code == 503
            msg = ready.json()["error"]["message"]
            assert msg.startswith("resnet18: unhealthy") and "watchdog" in msg, msg
            t0 = time.monotonic()
            r = post(c, photos["coffee.jpg"])  # no instance left: refused at once
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
            assert time.monotonic() - t0 < 1
            assert c.get("/models/resnet18").json()["state"].startswith("unhealthy")

            set_mode(fault, "ok")
            assert c.post("/models/resnet18/load").status_code == 200
            assert c.get("/health/ready").status_code == 200
            assert post(c, photos["coffee.jpg"]).status_code == 200
        print(f"hung batch failed after {took:.2f} s (watchdog 1 s)")
    finally:
        set_mode(fault, "ok")
        s.stop()


def test_request_whose_body_spans_a_reload_is_served(faulty: tuple[Server, Path], photos: dict[str, bytes]) -> None:
    """The race behind rare non-2xx in the reload test above, made deterministic with a slow body."""
    server = faulty[0]
    sent = threading.Event()
    data = photos["coffee.jpg"]

    def slow_body() -> Iterator[bytes]:
        yield data[:100]
        sent.set()
        time.sleep(1.0)  # the reload happens now
        yield data[100:]

    result: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        t = threading.Thread(target=lambda: result.append(post(c, slow_body())))  # type: ignore[arg-type]
        t.start()
        assert sent.wait(10)
        time.sleep(0.2)
        assert c.post("/models/resnet18/load").status_code == 200
        t.join()
    assert result[0].status_code == 200, result[0].text
