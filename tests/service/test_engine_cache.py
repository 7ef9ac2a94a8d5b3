"""The managed TensorRT engine cache, with fake builds: naming, validity, build-once locking, plan choice.

Nothing here needs TensorRT or a GPU; the one test that does is skipped (with the reason) without them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import sha256_file, write_config
from modelrepo.engine_cache import (
    EngineKey,
    batch_profile,
    cached_keys,
    engine_dir,
    engine_key,
    engine_precision,
    get_or_build,
    plan_for_gpu,
    read_sidecar,
    select_plan,
)
from modelrepo.errors import RepositoryError

KEY = EngineKey("9.0", "10.3.0", "fp16", 1, 32, 64, (3, 224, 224))


def _onnx(tmp_path: Path, content: bytes = b"onnx-v1") -> Path:
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    p = vdir / "model.onnx"
    p.write_bytes(content)
    return p


class CountingBuild:
    """A fake TensorRT build: sleeps, appends one line per build to a file (shared across processes)."""

    def __init__(self, counter: Path, delay: float = 0.0, fail: bool = False) -> None:
        self.counter, self.delay, self.fail = counter, delay, fail

    def __call__(self, onnx: Path, out: Path) -> None:
        with self.counter.open("a") as f:
            f.write(f"{onnx}\n")
        time.sleep(self.delay)
        out.write_bytes(b"partial")
        if self.fail:
            raise RuntimeError("builder ran out of memory")
        out.write_bytes(b"plan:" + onnx.read_bytes())

    @property
    def builds(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0


# -- keys ----------------------------------------------------------------------------------------
def test_key_filename_round_trips() -> None:
    assert KEY.filename == "sm90_trt10.3.0_fp16_b1-32-64_3x224x224.plan"
    assert EngineKey.from_filename(KEY.filename) == KEY
    odd = EngineKey("12.0", "10.8.0+cuda12", "bf16", 2, 4, 8, (3, 299, 299))
    assert odd.filename == "sm120_trt10.8.0-cuda12_bf16_b2-4-8_3x299x299.plan"  # safe characters only
    assert EngineKey.from_filename(odd.filename) == odd


@pytest.mark.parametrize("bad", ["model.plan", "sm90_trt10_fp16_b1-2_3x224x224.plan", "../sm90.plan",
                                 "sm90_trt10.3.0_fp16_b1-32-64_3x224x224.json"])
def test_other_filenames_are_not_keys(bad: str) -> None:
    with pytest.raises(ValueError):
        EngineKey.from_filename(bad)


@pytest.mark.parametrize("kwargs", [{"compute_capability": "sm90"}, {"precision": "fp8"}, {"min_batch": 0},
                                    {"opt_batch": 65}, {"input_shape": ()}, {"trt_version": "../"}])
def test_bad_keys_are_refused(kwargs: dict[str, object]) -> None:
    fields = KEY.to_json() | {"input_shape": KEY.input_shape} | kwargs
    with pytest.raises(ValueError):
        EngineKey(**fields)  # type: ignore[arg-type]


def test_service_key_from_config() -> None:
    assert batch_profile(64) == (1, 32, 64) and batch_profile(1) == (1, 1, 1)
    key = engine_key("8.6", "10.3.0", {}, 16, (3, 224, 224))
    assert (key.precision, key.profile, key.compute_capability) == ("fp16", (1, 8, 16), "8.6")
    assert engine_precision({"tensorrt.precision": "fp32"}) == "fp32"
    assert engine_precision({"tensorrt.precision": "fp32"}, pin="f16") == "fp16"  # the operator's pin wins
    with pytest.raises(RepositoryError, match="not a TensorRT precision"):
        engine_precision({"tensorrt.precision": "fp8"})


# -- cache validity ------------------------------------------------------------------------------
def test_cache_hit_skips_the_build(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    build = CountingBuild(tmp_path / "count")
    plan = get_or_build(onnx, KEY, build)
    assert plan == engine_dir(onnx.parent) / KEY.filename and plan.read_bytes() == b"plan:onnx-v1"
    meta = read_sidecar(plan)
    assert meta is not None and meta["onnx_sha256"] == sha256_file(onnx) and meta["key"] == KEY.to_json()
    assert isinstance(meta["build_seconds"], float) and meta["built_at"]
    assert get_or_build(onnx, KEY, build) == plan
    assert build.builds == 1
    assert cached_keys(onnx.parent) == [KEY]


def test_a_reexported_model_rebuilds_its_stale_plan(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    onnx = _onnx(tmp_path)
    build = CountingBuild(tmp_path / "count")
    get_or_build(onnx, KEY, build)
    onnx.write_bytes(b"onnx-v2")  # python -m export wrote a new model.onnx
    with caplog.at_level(logging.INFO):
        plan = get_or_build(onnx, KEY, build)
    assert build.builds == 2 and plan.read_bytes() == b"plan:onnx-v2"
    assert "stale" in caplog.text and "model.onnx changed" in caplog.text
    assert "this takes minutes" in caplog.text and "built TensorRT engine" in caplog.text


def test_a_plan_without_a_matching_sidecar_is_rebuilt(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    build = CountingBuild(tmp_path / "count")
    plan = get_or_build(onnx, KEY, build)
    meta = json.loads(plan.with_suffix(".json").read_text())
    meta["key"]["precision"] = "fp32"  # e.g. a plan copied in under another key's name
    plan.with_suffix(".json").write_text(json.dumps(meta))
    get_or_build(onnx, KEY, build)
    plan.with_suffix(".json").unlink()
    get_or_build(onnx, KEY, build)
    assert build.builds == 3


def test_foreign_plans_are_never_returned_or_touched(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    build = CountingBuild(tmp_path / "count")
    other_gpu = EngineKey("8.6", "10.3.0", "fp16", 1, 32, 64, (3, 224, 224))
    foreign = get_or_build(onnx, other_gpu, build)
    stamp = foreign.stat().st_mtime_ns
    for key in (KEY, EngineKey("8.6", "10.4.0", "fp16", 1, 32, 64, (3, 224, 224)),
                EngineKey("8.6", "10.3.0", "fp32", 1, 32, 64, (3, 224, 224)),
                EngineKey("8.6", "10.3.0", "fp16", 1, 16, 32, (3, 224, 224))):
        assert get_or_build(onnx, key, build) != foreign
    assert build.builds == 5
    assert foreign.stat().st_mtime_ns == stamp and read_sidecar(foreign) is not None
    assert len(cached_keys(onnx.parent)) == 5


def test_a_failed_build_leaves_no_plan_and_releases_the_lock(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        get_or_build(onnx, KEY, CountingBuild(tmp_path / "count", fail=True))
    d = engine_dir(onnx.parent)
    assert sorted(p.name for p in d.iterdir()) == [KEY.stem + ".lock"]  # no plan, no temp file, no sidecar
    done = threading.Event()

    def retry() -> None:
        get_or_build(onnx, KEY, CountingBuild(tmp_path / "count"))
        done.set()

    t = threading.Thread(target=retry)
    t.start()
    t.join(10)
    assert done.is_set(), "the lock was not released"
    assert (d / KEY.filename).read_bytes() == b"plan:onnx-v1"


def test_an_empty_build_is_an_error(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    with pytest.raises(RuntimeError, match="wrote no plan"):
        get_or_build(onnx, KEY, lambda onnx, out: None)
    assert not (engine_dir(onnx.parent) / KEY.filename).exists()


def test_a_missing_onnx_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="missing"):
        get_or_build(tmp_path / "1" / "model.onnx", KEY, CountingBuild(tmp_path / "count"))


# -- build once --------------------------------------------------------------------------------
def test_two_threads_build_once(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    build = CountingBuild(tmp_path / "count", delay=0.5)
    results: list[Path] = []
    start = threading.Barrier(2)

    def starter() -> None:
        start.wait()
        results.append(get_or_build(onnx, KEY, build))

    threads = [threading.Thread(target=starter) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert build.builds == 1
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == b"plan:onnx-v1"


def _process_starter(onnx: str, counter: str, start: threading.Barrier, out: str) -> None:
    start.wait()
    plan = get_or_build(Path(onnx), KEY, CountingBuild(Path(counter), delay=0.5))
    Path(out).write_text(str(plan))


def test_two_processes_build_once(tmp_path: Path) -> None:
    onnx = _onnx(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_process_starter, args=(str(onnx), str(tmp_path / "count"), start,
                                                        str(tmp_path / f"out{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert CountingBuild(tmp_path / "count").builds == 1
    plans = {(tmp_path / f"out{i}").read_text() for i in range(2)}
    assert plans == {str(engine_dir(onnx.parent) / KEY.filename)}


# -- cc_model_filenames ------------------------------------------------------------------------
def test_select_plan() -> None:
    ccs = {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert select_plan(ccs, "model.plan", "9.0") == "model.sm90.plan"
    assert select_plan({}, "model.plan", "9.0") == "model.plan"
    with pytest.raises(RepositoryError, match=r"compute capability 7\.5.*8\.6 \(model\.sm86\.plan\), 9\.0"):
        select_plan(ccs, "model.plan", "7.5")
    with pytest.raises(RepositoryError, match="not a path"):
        select_plan({"9.0": "../../etc/passwd"}, "model.plan", "9.0")


def _trt_model(tmp_path: Path, ccs: dict[str, str], params: dict[str, str] | None = None) -> Path:
    model_dir = tmp_path / "m_trt"
    (model_dir / "1").mkdir(parents=True)
    cfg = mc.ModelConfig(name="m_trt", platform="tensorrt_plan", max_batch_size=8)
    for cc, fname in ccs.items():
        cfg.cc_model_filenames[cc] = fname
        (model_dir / "1" / fname).write_bytes(b"plan")
    for k, v in (params or {}).items():
        cfg.parameters[k].string_value = v
    write_config(model_dir, cfg)
    return model_dir / "1" / "model.plan"


def test_plan_for_gpu_follows_cc_model_filenames(tmp_path: Path) -> None:
    default = _trt_model(tmp_path, {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"},
                         {"tensorrt.compute_capability": "8.6,9.0", "tensorrt.sm90.version": "10.3.0"})
    assert plan_for_gpu(default, {"tensorrt.sm90.version": "10.3.0"}, "9.0", "10.3.0").name == "model.sm90.plan"
    assert plan_for_gpu(default, {}, "8.6", "10.3.0").name == "model.sm86.plan"
    with pytest.raises(RepositoryError, match="no TensorRT plan for this GPU"):
        plan_for_gpu(default, {}, "8.9", "10.3.0")
    with pytest.raises(RepositoryError, match="built with TensorRT 10.3.0, this is 10.5.0"):
        plan_for_gpu(default, {"tensorrt.sm90.version": "10.3.0"}, "9.0", "10.5.0")


def test_plan_for_gpu_without_a_map_checks_the_config(tmp_path: Path) -> None:
    default = _trt_model(tmp_path, {})
    default.write_bytes(b"plan")
    params = {"tensorrt.compute_capability": "9.0", "tensorrt.version": "10.3.0"}
    assert plan_for_gpu(default, params, "9.0", "10.3.0") == default
    with pytest.raises(RepositoryError, match="built for compute capability 9.0, this GPU is 8.6"):
        plan_for_gpu(default, params, "8.6", "10.3.0")


# -- on a GPU ----------------------------------------------------------------------------------
def _why_not_gpu() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install -e '.[gpu]')"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible"


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_why_not_gpu() is not None, reason=f"needs TensorRT and a GPU: {_why_not_gpu()}")
def test_build_cached_engine_serves_an_onnx_model(tmp_path: Path) -> None:  # pragma: no cover - GPU only
    import numpy as np
    import torch

    from export.onnx_export import export_onnx
    from service.runtimes.base import LoadSpec
    from service.runtimes.tensorrt import TensorRTRuntime, build_cached_engine

    model_dir = tmp_path / "tiny"
    (model_dir / "1").mkdir(parents=True)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    onnx = export_onnx(net.eval(), model_dir / "1" / "model.onnx", (3, 32, 32), simplify=False)
    write_config(model_dir, mc.ModelConfig(name="tiny", platform="onnxruntime_onnx", max_batch_size=4))
    spec = LoadSpec(model_file=onnx, params={"tensorrt.precision": "fp32"}, device="cuda", input_shape=(3, 32, 32))
    plan = build_cached_engine(spec)
    assert EngineKey.from_filename(plan.name).profile == (1, 2, 4)
    assert build_cached_engine(spec) == plan  # the second start finds it
    rt = TensorRTRuntime()
    rt.load(spec)
    assert rt.infer(np.zeros((3, 3, 32, 32), dtype=np.float32)).shape == (3, 4)
    rt.close()
