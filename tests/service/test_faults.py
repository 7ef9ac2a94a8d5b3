"""Faults in production, injected: runtime errors, hangs, garbage logits, corrupt model files, reloads
under traffic. Unit tests of the output checks and the batcher's watchdog, then real servers on loopback
driven by ``--fault-file`` (service/runtimes/faults.py).

Nothing waits a fixed time for something else to happen: a test waits for the event (a runtime held at
its gate, a log line, a gauge) with a deadline far beyond what a busy machine needs, and "fast" means
"before the hung work could have finished", never a wall-clock bound.
"""

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

from service.engine.batching import Batcher, BatcherConfig
from service.engine.guards import BadOutput, check_rows, checked
from service.engine.steps import StepResult, stacked
from service.errors import ModelNotReady, RuntimeHung
from service.runtimes.faults import FaultSwitch, FaultyRuntime
from tests.service.conftest import Server, start_server

#: the deadline for something that takes milliseconds to a second: a failure, not a hang, if it never happens
DEADLINE_S = 30.0

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
    """A fake instance that hangs while its gate is closed (``returned`` is set once it is through),
    else returns row i = [input]."""

    def __init__(self, hang: bool) -> None:
        self.open = threading.Event()
        self.returned = threading.Event()
        if not hang:
            self.open.set()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.open.wait(4 * DEADLINE_S)
        self.returned.set()
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
            await asyncio.wait_for(first[0], DEADLINE_S)
        assert time.monotonic() - t0 > 0.15  # at the watchdog, not before
        assert not hung.returned.is_set()  # failed while the batch is still stuck, not when it came back
        assert e.value.status == 503 and e.value.code == "runtime_unhealthy" and "Retry-After" in e.value.headers
        with pytest.raises(ModelNotReady):
            await asyncio.wait_for(queued[0], DEADLINE_S)
        assert len(reasons) == 1 and "hung" in reasons[0] and "0 of 1 instances left" in reasons[0]
        assert b.retired == {0}
        with pytest.raises(ModelNotReady, match="hung"):  # admission refuses at once: submit itself raises
            b.submit(one(3), None)
        await asyncio.wait_for(b.drain_and_stop(), DEADLINE_S)
        assert not hung.returned.is_set()  # drained without joining the stuck thread
    finally:
        hung.open.set()


async def test_watchdog_keeps_the_healthy_instances_serving() -> None:
    hung, healthy = Gate(hang=True), Gate(hang=False)
    reasons: list[str] = []
    # the watchdog well above what a healthy batch of one takes on a busy machine, which must never trip it
    b = Batcher("fake", [stacked(hung.infer), stacked(healthy.infer)],
                BatcherConfig(max_batch_size=1, max_queue_delay_s=0), watchdog_s=1.0, on_unhealthy=reasons.append)
    b.start()
    try:
        outs = await asyncio.wait_for(
            asyncio.gather(*(b.run(one(i), None) for i in range(6)), return_exceptions=True), DEADLINE_S)
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
    threading.Timer(0.3, slow.open.set).start()  # the slow batch under test: 0.3 s
    b = Batcher("fake", stacked(slow.infer), BatcherConfig(max_batch_size=1), watchdog_s=0)
    b.start()
    assert float((await asyncio.wait_for(b.run(one(4), None), DEADLINE_S))[0][0][0]) == 4.0
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
    out: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: out.append(rt.infer(x)), daemon=True)
    worker.start()
    hang_key = os.stat(path)
    deadline = time.monotonic() + DEADLINE_S
    while rt.switch.key() != (hang_key.st_mtime_ns, hang_key.st_size, hang_key.st_ino):  # "hang" taken
        assert time.monotonic() < deadline, "the batch never read the hang mode"
        time.sleep(0.01)
    worker.join(0.2)
    assert worker.is_alive() and not out  # hangs while the file stays as it is
    set_mode(path, "ok")
    worker.join(DEADLINE_S)  # ... and returns once it changes (the switch polls every 50 ms)
    assert not worker.is_alive() and out[0].shape == (2, 3)


# -- real servers --------------------------------------------------------------------------------


def copy_model(src_repo: Path, repo: Path, name: str, src: str = "resnet18") -> Path:
    from modelrepo.config import read_config, write_config

    shutil.copytree(src_repo / src, repo / name)
    cfg = read_config(repo / name)
    cfg.name = name
    write_config(repo / name, cfg)
    return repo / name


def post(c: httpx.Client, data: bytes, model: str = "resnet18", **kw: Any) -> httpx.Response:
    return c.post("/classify", content=data, headers={"Content-Type": "image/jpeg"},
                  params={"model": model, "top_k": 1}, **kw)


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.02)


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
    # a body held open across a reload must not meet the minimum body rate (its grace outlasts any reload)
    s = start_server(repo, tmp, "--fault-file", str(fault), "--max-batch-size", "2", "--body-timeout-s", "600",
                     wait_ready=False)
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
            wait_for(lambda: len(statuses) >= 4, "traffic under way")  # both clients are sending
            started = len(statuses)
            for _ in range(3):
                assert c.post("/models/resnet18/load").status_code == 200
            during_a = len(statuses) - started
            assert c.post("/models/second/unload").status_code == 200
            assert post(c, photos["coffee.jpg"], model="second").status_code == 503
            assert c.post("/models/second/load").status_code == 200
            assert post(c, photos["coffee.jpg"], model="second").status_code == 200
            reloaded = len(statuses)
            wait_for(lambda: len(statuses) >= reloaded + 4, "traffic after the reloads")
    finally:
        stop.set()
        for w in workers:
            w.join()
    print(f"reload under traffic: {len(statuses)} requests ({during_a} answered during 3 reloads of resnet18), "
          f"{len(failures)} non-2xx")
    # how many requests a reload overlaps is the machine's speed; traffic before, during and after is the design
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
            # the hang lasts until the file changes (up to 10 min): an answer at all is the watchdog's
            r = post(c, photos["coffee.jpg"], timeout=DEADLINE_S)
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["error"]["code"] == "runtime_unhealthy", r.text
            assert "Retry-After" in r.headers
            assert took > 0.9, f"failed after {took:.1f} s, before the 1 s watchdog"
            ready = c.get("/health/ready")
            assert ready.status_code == 503
            msg = ready.json()["error"]["message"]
            assert msg.startswith("resnet18: unhealthy") and "watchdog" in msg, msg
            r = post(c, photos["coffee.jpg"], timeout=DEADLINE_S)  # no instance left: refused, never queued
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
            assert c.get("/models/resnet18").json()["state"].startswith("unhealthy")

            set_mode(fault, "ok")
            assert c.post("/models/resnet18/load").status_code == 200
            assert c.get("/health/ready").status_code == 200
            assert post(c, photos["coffee.jpg"]).status_code == 200
        print(f"hung batch failed after {took:.2f} s (watchdog 1 s)")
    finally:
        set_mode(fault, "ok")
        s.stop()


def inflight(c: httpx.Client) -> float:
    """The server's in-flight requests gauge (the /metrics request that reads it included)."""
    found = re.findall(r"^inference_inflight_requests(?:\{[^}]*\})? (\S+)$", c.get("/metrics").text, re.M)
    return sum(float(v) for v in found)


def test_request_whose_body_spans_a_reload_is_served(faulty: tuple[Server, Path], photos: dict[str, bytes]) -> None:
    """The race behind rare non-2xx in the reload test above, made deterministic with a slow body: the
    handler has started (and picked the model instance) before the reload, the body ends after it."""
    server = faulty[0]
    reloaded = threading.Event()
    data = photos["coffee.jpg"]

    def slow_body() -> Iterator[bytes]:
        yield data[:100]
        assert reloaded.wait(DEADLINE_S), "the reload never finished"  # the reload happens now
        yield data[100:]

    result: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=60) as c, httpx.Client(base_url=server.url, timeout=60) as admin:
        t = threading.Thread(target=lambda: result.append(post(c, slow_body())))  # type: ignore[arg-type]
        t.start()
        try:
            # the handler is running once the gauge counts it beside this /metrics request
            wait_for(lambda: inflight(admin) >= 2, "the slow request in the handler", DEADLINE_S)
            assert admin.post("/models/resnet18/load").status_code == 200
        finally:
            reloaded.set()
            t.join(DEADLINE_S)
    assert result and result[0].status_code == 200, result[0].text if result else "no answer"
