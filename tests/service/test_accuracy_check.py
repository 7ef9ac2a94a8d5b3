"""The accuracy gate that travels with a model, re-run at load (``service.engine.accuracy_check``).

A tiny ONNX model (3x8x8 -> 10 classes, built with ``onnx.helper``: no export, no torch) served by ONNX
Runtime, which reports the precision its config records: a config saying ``export.precision: int8``
makes the service check it exactly as it checks a real INT8 model, with no dependence on the CPU. The
check set holds the model's own logits (it passes) or those logits permuted (it fails).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.checkset import CHECK_FILE, PARAM_CHECK, PARAM_CPU, PARAM_MIN, PARAM_SCORE, as_stored, write_check
from modelrepo.config import get_params, read_config, set_params, write_config
from modelrepo.cpu import this_cpu
from modelrepo.errors import RepositoryError
from modelrepo.layout import scan_model
from service.config import Settings
from service.engine.accuracy_check import check_accuracy
from service.engine.catalog import Catalog
from service.engine.client import EngineClient
from service.engine.engine import Engine
from service.engine.manager import ModelManager
from service.engine.process import snapshot
from service.engine.wire import CatalogData
from service.metrics import Metrics
from service.runtimes import LoadSpec

SHAPE = (3, 8, 8)
CLASSES = 10
EXPORTED_ON = "Intel(R) Xeon(R) Platinum 8480+ (amx: VNNI, BF16)"


def tiny_onnx(path: Path) -> Path:
    """Channel means -> a linear layer with large weights: each input has one clearly winning class."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((3, CLASSES)) * 40).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def model_logits(onnx_file: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": inputs})[0])


def add_model(repo: Path, name: str, precision: str, check: str | None = "good", **params: str) -> Path:
    """A model folder: the tiny model, config.pbtxt recording ``precision`` and (unless ``check`` is None)
    a check set whose reference is the model's own logits ("good") or those rows rolled ("bad")."""
    onnx_file = tiny_onnx(repo / name / "1" / "model.onnx")
    cfg = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=4)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=list(SHAPE))
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[CLASSES])
    recorded = {"export.precision": precision, "preprocess.crop": "8", "source.weights": "random", **params}
    if check is not None:
        inputs = as_stored(np.random.default_rng(1).standard_normal((40, *SHAPE)).astype(np.float32))
        ref = model_logits(onnx_file, inputs)
        write_check(onnx_file.parent / CHECK_FILE, inputs, ref if check == "good" else np.roll(ref, 1, axis=0))
        recorded |= {PARAM_CHECK: CHECK_FILE, PARAM_MIN: "0.98", PARAM_CPU: EXPORTED_ON}
    set_params(cfg, recorded)
    write_config(repo / name, cfg)
    return onnx_file.parent


def settings(repo: Path, **kw: Any) -> Settings:
    return Settings(model_repo=repo, runtime="onnxruntime", warmup=False, workers=1, **kw)


async def test_a_check_set_that_holds_here_is_run_and_passes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_model(tmp_path / "repo", "tiny_int8", "int8", **{PARAM_SCORE: "1.0"})
    m = ModelManager(settings(tmp_path / "repo"), Metrics())
    with caplog.at_level(logging.INFO, "service.engine.manager"):
        await m.load("tiny_int8")
    try:
        check = m.get("tiny_int8").describe().json()["accuracy_check"]
        assert isinstance(check, dict)
        assert check["status"] == "passed" and check["score"] == 1.0 and check["gate"] == 0.98
        assert check["images"] == 32 and check["precision"] == "int8"
        assert check["exported_on"] == EXPORTED_ON and check["checked_on"] == this_cpu().describe()
        line = next(r.getMessage() for r in caplog.records if "accuracy check on" in r.getMessage())
        assert "passed" in line and "32 images in" in line and EXPORTED_ON in line
    finally:
        await m.close()


async def test_below_the_gate_an_int8_version_is_refused_saying_why(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "tiny", "fp32", check=None)
    add_model(repo, "tiny_int8", "int8", check="bad")
    metrics = Metrics()
    engine = Engine(ModelManager(settings(repo, default_model="tiny_int8"), metrics), ThreadPoolExecutor(1), metrics)
    await engine.start()
    try:
        reason = engine.not_ready()["tiny_int8"]
        assert reason.startswith("failed: model 'tiny_int8' version 1 is refused here")
        for words in ("accuracy check on onnxruntime-cpu measured score", "below its gate of 98.0%",
                      f"exported and gated on {EXPORTED_ON}", f"this is {this_cpu().describe()}",
                      "serve the FP32 model 'tiny' instead", f"machine of this class ({this_cpu().cpu_class})",
                      "--accept-accuracy-loss", "IMGSERVE_ACCEPT_ACCURACY_LOSS"):
            assert words in reason, words
        described = await engine.describe("tiny_int8")
        assert described.state == reason and described.versions == []
        ok, why = EngineClient(engine.manager.settings, metrics, transport=engine).readiness()
        assert not ok and f"tiny_int8: {reason}" in why
        assert engine.not_ready().keys() == {"tiny_int8"}  # the FP32 model serves
    finally:
        await engine.close()


async def test_the_reason_reaches_a_front_end_of_processes_2(tmp_path: Path) -> None:
    """The engine process's catalog (msgpack over its socket) carries the refusal to each front end."""
    repo = tmp_path / "repo"
    add_model(repo, "tiny_int8", "int8", check="bad")
    add_model(repo, "other_int8", "int8")
    m = ModelManager(settings(repo), Metrics())
    await m.load_all()
    try:
        sent = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot(m, started=True)), type=CatalogData)
        catalog = Catalog.parse(sent)
        assert "is refused here" in catalog.not_ready["tiny_int8"]
        assert catalog.states["tiny_int8"] == m.states["tiny_int8"]
        served = msgspec.msgpack.decode(msgspec.msgpack.encode(m.get("other_int8").describe()))  # as it travels
        assert served["accuracy_check"]["status"] == "passed"
    finally:
        await m.close()


async def test_the_accept_setting_serves_it_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_model(tmp_path / "repo", "tiny_int8", "int8", check="bad")
    m = ModelManager(settings(tmp_path / "repo", accept_accuracy_loss=True), Metrics())
    with caplog.at_level(logging.INFO, "service.engine.manager"):
        await m.load("tiny_int8")
    try:
        check = m.get("tiny_int8").describe().json()["accuracy_check"]
        assert isinstance(check, dict) and check["status"] == "accepted_loss"
        assert "BELOW ITS ACCURACY GATE (--accept-accuracy-loss)" in str(check["message"])
        assert any(r.levelno == logging.WARNING and "BELOW ITS ACCURACY GATE" in r.getMessage()
                   for r in caplog.records)
        assert m.not_ready() == {}
    finally:
        await m.close()


def test_the_setting_is_a_flag_and_an_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import parse_settings

    assert parse_settings(["--accept-accuracy-loss"]).accept_accuracy_loss is True
    monkeypatch.setenv("IMGSERVE_ACCEPT_ACCURACY_LOSS", "true")
    assert Settings().accept_accuracy_loss is True


def _damage(vdir: Path, how: str) -> str:
    """Damage the version's check set (or its config); returns what the error must say."""
    path = vdir / CHECK_FILE
    if how == "missing":
        path.unlink()
        return f"accuracy check set {path} is missing"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
        return f"accuracy check set {path} cannot be read"
    if how == "other_model":
        write_check(path, np.zeros((4, 3, 16, 16), np.float32), np.zeros((4, CLASSES), np.float32))
        return f"accuracy check set {path} holds inputs of shape (4, 3, 16, 16), but the model takes (3, 8, 8)"
    if how == "other_classes":
        write_check(path, np.zeros((4, *SHAPE), np.float32), np.zeros((4, 1000), np.float32))
        return f"accuracy check set {path} holds reference logits of shape (4, 1000)"
    model_dir = vdir.parent
    cfg = read_config(model_dir)
    if how == "bad_gate":
        set_params(cfg, {**get_params(cfg), PARAM_MIN: "98%"})
        write_config(model_dir, cfg)
        return f"config parameter {PARAM_MIN} is '98%', expected a fraction"
    set_params(cfg, {**get_params(cfg), PARAM_CHECK: "../../elsewhere.npz"})
    write_config(model_dir, cfg)
    return f"config parameter {PARAM_CHECK} is '../../elsewhere.npz': it names a file in the version folder"


@pytest.mark.parametrize("how", ["missing", "truncated", "other_model", "other_classes", "bad_gate", "path"])
async def test_a_bad_check_set_fails_the_load_naming_the_file(tmp_path: Path, how: str) -> None:
    vdir = add_model(tmp_path / "repo", "tiny_int8", "int8")
    expected = _damage(vdir, how)
    m = ModelManager(settings(tmp_path / "repo"), Metrics())
    try:
        with pytest.raises(RepositoryError) as err:
            await m.load("tiny_int8")
        assert expected in err.value.message
        assert m.not_ready()["tiny_int8"] == f"failed: {err.value.message}"
    finally:
        await m.close()


async def test_a_version_without_a_check_set_loads_as_before(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    add_model(tmp_path / "repo", "tiny_int8", "int8", check=None)
    add_model(tmp_path / "repo", "tiny", "fp32", check=None)
    m = ModelManager(settings(tmp_path / "repo"), Metrics())
    with caplog.at_level(logging.INFO, "service.engine.manager"):
        await m.load_all()
    try:
        assert m.not_ready() == {}
        assert m.get("tiny_int8").describe().json()["accuracy_check"]["status"] == "no_check_set"  # type: ignore[index]
        assert m.get("tiny").describe().json()["accuracy_check"]["status"] == "not_needed"  # type: ignore[index]
        said = [r.getMessage() for r in caplog.records if "no accuracy check set" in r.getMessage()]
        assert len(said) == 1 and "tiny_int8 v1" in said[0]
    finally:
        await m.close()


class FakeRuntime:
    """OpenVINO's shape of behaviour: BF16 by its own default, FP32 when pinned; BF16 answers badly."""

    name, label, device_kind = "fake", "fake-cpu", "cpu"

    def __init__(self, model_file: Path, precision: str) -> None:
        self.model_file, self.precision, self.closed = model_file, precision, False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = model_logits(self.model_file, batch)
        return np.roll(out, 3, axis=1) if self.precision == "bf16" else out

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("accept", [False, True])
def test_an_fp32_model_run_in_bf16_by_default_is_served_in_fp32(tmp_path: Path, accept: bool) -> None:
    vdir = add_model(tmp_path / "repo", "tiny", "fp32")
    entry = scan_model(tmp_path / "repo" / "tiny")
    spec = LoadSpec(vdir / "model.onnx", entry.params, input_shape=SHAPE)
    loaded = [FakeRuntime(spec.model_file, "bf16")]
    pins: list[str | None] = []

    def reload(pinned: LoadSpec) -> list[Any]:
        pins.append(pinned.precision)
        return [FakeRuntime(pinned.model_file, "fp32")]

    runtimes, found = check_accuracy(entry, 1, loaded, spec, 4, accept, reload)  # type: ignore[arg-type]
    if accept:
        assert runtimes == loaded and found.status == "accepted_loss" and pins == []
        return
    assert pins == ["f32"] and loaded[0].closed and runtimes[0].precision == "fp32"
    assert found.status == "served_fp32" and found.precision == "bf16" and found.score is not None
    assert found.message.startswith("served in fp32 (exact, slower) instead of bf16: its bf16 accuracy check")
    assert "--accept-accuracy-loss" in found.message and EXPORTED_ON in found.message


def test_the_check_runs_in_batches_of_the_max_batch_size(tmp_path: Path) -> None:
    vdir = add_model(tmp_path / "repo", "tiny_int8", "int8")
    entry = scan_model(tmp_path / "repo" / "tiny_int8")
    seen: list[int] = []

    class Counting(FakeRuntime):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            seen.append(len(batch))
            return model_logits(self.model_file, batch)

    spec = LoadSpec(vdir / "model.onnx", entry.params, input_shape=SHAPE)
    _, found = check_accuracy(entry, 1, [Counting(spec.model_file, "int8")], spec, 5, False,  # type: ignore[list-item]
                              lambda _: [])
    assert found.status == "passed" and sum(seen) == 32 and max(seen) == 5


@pytest.mark.skipif(not this_cpu().bf16, reason="needs a BF16 CPU (AMX or AVX-512 BF16): OpenVINO's default is "
                                               "FP32 elsewhere")
async def test_openvino_bf16_below_the_gate_serves_fp32_for_real(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    add_model(tmp_path / "repo", "tiny", "fp32", check="bad")
    m = ModelManager(Settings(model_repo=tmp_path / "repo", runtime="openvino", warmup=False, workers=1),
                     Metrics())
    await m.load("tiny")
    try:
        described = m.get("tiny").describe().json()
        assert described["precision"] == "fp32"
        assert described["accuracy_check"]["status"] == "served_fp32"  # type: ignore[index]
    finally:
        await m.close()


def test_the_fixture_model_is_decided(tmp_path: Path) -> None:
    """The tiny model's FP32 answers are clear-cut, so the rolled reference must fail the gate."""
    from modelrepo.checkset import agreement

    onnx_file = tiny_onnx(tmp_path / "m.onnx")
    x = as_stored(np.random.default_rng(1).standard_normal((40, *SHAPE)).astype(np.float32))
    ref = model_logits(onnx_file, x)
    assert agreement(ref, ref).score == 1.0 and agreement(np.roll(ref, 1, axis=0), ref).score < 0.5


@pytest.mark.slow
def test_processes_2_front_ends_say_why_over_http(tmp_path: Path) -> None:
    """A real ``--processes 2`` server: the engine process refuses the version, each front end's
    /health/ready and /models carry its words."""
    import time

    import httpx

    from tests.service.conftest import start_server

    repo = tmp_path / "repo"
    add_model(repo, "tiny", "fp32", check=None)
    add_model(repo, "tiny_int8", "int8", check="bad")
    srv = start_server(repo, tmp_path, "--processes", "2", "--runtime", "onnxruntime", "--default-model",
                       "tiny_int8", wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:  # until the engine has tried every model (not "loading models")
            r = httpx.get(f"{srv.url}/health/ready", timeout=5)
            body = r.json()
            if r.status_code == 503 and "tiny_int8" in body["error"]["message"]:
                break
            time.sleep(0.1)
        assert "tiny_int8: failed: model 'tiny_int8' version 1 is refused here" in body["error"]["message"]
        models = {m["name"]: m for m in httpx.get(f"{srv.url}/models", timeout=5).json()["models"]}
        assert "below its gate of 98.0%" in models["tiny_int8"]["state"]
        assert models["tiny"]["accuracy_check"]["status"] == "not_needed"
    finally:
        srv.stop()
    assert "is refused here" in srv.logs()
