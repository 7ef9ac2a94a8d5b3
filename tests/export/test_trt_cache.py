"""``--trt-cache`` and multi-GPU ``NAME_trt`` models, with TensorRT faked (no GPU here)."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

import export.tensorrt as ext
from export.repo_writer import ConfigSpec, build_config
from modelrepo.config import format_config, get_params, parse_config, read_config, write_config
from modelrepo.engine_cache import EngineKey, engine_dir, plan_for_gpu, read_sidecar
from tests.export.helpers import run_cli

SHAPE = (3, 224, 224)


def _trt_spec(ccs: dict[str, str], params: dict[str, str] | None = None) -> ConfigSpec:
    return ConfigSpec("m_trt", "tensorrt_plan", SHAPE, 5, 8, (8,), {"export.precision": "fp16", **(params or {})},
                      gpu=True, cc_model_filenames=ccs, default_model_filename=next(iter(ccs.values()), ""))


def test_config_with_cc_model_filenames_parses_back() -> None:
    spec = _trt_spec({"9.0": "model.sm90.plan", "8.6": "model.sm86.plan"})
    text = format_config(build_config(spec))
    assert "cc_model_filenames" in text
    cfg = parse_config(text)
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert cfg.default_model_filename == "model.sm90.plan"
    plain = parse_config(format_config(build_config(ConfigSpec("m", "onnxruntime_onnx", SHAPE, 5, 8, (8,), {}))))
    assert not plain.cc_model_filenames and plain.default_model_filename == ""


def test_plan_filename() -> None:
    assert ext.plan_filename("9.0") == "model.sm90.plan" and ext.plan_filename("12.0") == "model.sm120.plan"


def _repo(tmp_path: Path, trt_ccs: dict[str, str] | None, trt_params: dict[str, str] | None = None) -> Path:
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(b"onnx")
    write_config(repo / "m", build_config(ConfigSpec("m", "onnxruntime_onnx", SHAPE, 5, 16, (8,), {})))
    if trt_ccs is not None:
        (repo / "m_trt" / "1").mkdir(parents=True)
        for fname in trt_ccs.values():
            (repo / "m_trt" / "1" / fname).write_bytes(b"plan-9.0")
        write_config(repo / "m_trt", build_config(_trt_spec(trt_ccs, trt_params)))
    return repo


def test_add_plan_adds_a_gpu_kind_instead_of_replacing(tmp_path: Path) -> None:
    repo = _repo(tmp_path, {"9.0": "model.sm90.plan"}, {"tensorrt.sm90.version": "10.3.0"})
    src = tmp_path / "built.plan"
    src.write_bytes(b"plan-8.6")
    ext.add_plan(repo / "m_trt", 1, src, "8.6", {"tensorrt.sm86.version": "10.3.0"})
    cfg = read_config(repo / "m_trt")
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    params = get_params(cfg)
    assert params["tensorrt.compute_capability"] == "8.6,9.0" and params["tensorrt.sm90.version"] == "10.3.0"
    vdir = repo / "m_trt" / "1"
    assert (vdir / "model.sm90.plan").read_bytes() == b"plan-9.0"
    assert (vdir / "model.sm86.plan").read_bytes() == b"plan-8.6"
    assert sorted(p.name for p in vdir.iterdir()) == ["model.sm86.plan", "model.sm90.plan"]  # no temp files
    default = vdir / cfg.default_model_filename
    assert plan_for_gpu(default, params, "8.6", "10.3.0").name == "model.sm86.plan"
    assert plan_for_gpu(default, params, "9.0", "10.3.0").name == "model.sm90.plan"


def test_add_plan_keeps_a_plan_exported_before_the_map(tmp_path: Path) -> None:
    repo = _repo(tmp_path, None)
    (repo / "m_trt" / "1").mkdir(parents=True)
    (repo / "m_trt" / "1" / "model.plan").write_bytes(b"old")
    spec = ConfigSpec("m_trt", "tensorrt_plan", SHAPE, 5, 8, (8,), {"tensorrt.compute_capability": "9.0"}, gpu=True)
    write_config(repo / "m_trt", build_config(spec))
    src = tmp_path / "built.plan"
    src.write_bytes(b"new")
    ext.add_plan(repo / "m_trt", 1, src, "8.6", {})
    cfg = read_config(repo / "m_trt")
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.plan"}


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, int, int]]]:
    """TensorRT 10.3.0 on a compute capability 8.6 GPU; records each build (precision, profile)."""
    builds: list[tuple[str, tuple[int, int, int]]] = []

    def build_engine(onnx: Path, plan: Path, precision: str, shape: tuple[int, int, int],
                     profile: tuple[int, int, int], timing: Path, calib: object = None) -> Path:
        assert shape == SHAPE
        builds.append((precision, profile))
        plan.write_bytes(b"plan-8.6")
        return plan

    monkeypatch.setattr(ext, "require", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(ext, "compute_capability", lambda: "8.6")
    monkeypatch.setattr(ext, "build_engine", build_engine)
    monkeypatch.setattr(ext, "_gate", lambda *a, **k: 0.995)
    return builds


def test_trt_cache_builds_the_services_key_once_and_adds_the_plan(
        tmp_path: Path, fake_trt: list[tuple[str, tuple[int, int, int]]]) -> None:
    repo = _repo(tmp_path, {"9.0": "model.sm90.plan"})
    run = run_cli("--trt-cache", "--repo", str(repo), "--name", "m")
    assert run.rc == 0, run.err
    key = EngineKey("8.6", "10.3.0", "fp16", 1, 8, 16, SHAPE)  # what the service asks for: max_batch_size 16
    plan = engine_dir(repo / "m" / "1") / key.filename
    assert f"wrote {plan}" in run.out and read_sidecar(plan) is not None
    assert f"wrote {repo / 'm_trt' / '1' / 'model.sm86.plan'}" in run.out
    cfg = read_config(repo / "m_trt")
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert get_params(cfg)["tensorrt.sm86.agreement"] == "0.9950"
    again = run_cli("--trt-cache", "--repo", str(repo), "--name", "m", "--version", "1")
    assert again.rc == 0, again.err
    assert fake_trt == [("fp16", (1, 8, 16))]  # cached, and m_trt already has the 8.6 plan


def test_trt_cache_leaves_a_trt_model_of_another_precision_alone(
        tmp_path: Path, fake_trt: list[tuple[str, tuple[int, int, int]]]) -> None:
    repo = _repo(tmp_path, {"9.0": "model.sm90.plan"}, {"export.precision": "int8"})
    assert run_cli("--trt-cache", "--repo", str(repo), "--name", "m").rc == 0
    assert dict(read_config(repo / "m_trt").cc_model_filenames) == {"9.0": "model.sm90.plan"}
    assert len(fake_trt) == 1


def test_trt_cache_refuses_int8_and_missing_models(
        tmp_path: Path, fake_trt: list[tuple[str, tuple[int, int, int]]]) -> None:
    repo = _repo(tmp_path, None)
    missing = run_cli("--trt-cache", "--repo", str(repo), "--name", "m", "--version", "3")
    assert missing.rc != 0 and "does not exist" in missing.err
    write_config(repo / "m", build_config(ConfigSpec("m", "onnxruntime_onnx", SHAPE, 5, 16, (8,),
                                                     {"tensorrt.precision": "int8"})))
    int8 = run_cli("--trt-cache", "--repo", str(repo), "--name", "m")
    assert int8.rc != 0 and "calibration" in int8.err
    assert fake_trt == []


def test_trt_cache_needs_a_repo_and_a_name() -> None:
    run = run_cli("--trt-cache", "--name", "m")
    assert run.rc == 2 and "--trt-cache needs --repo" in run.err


def test_trt_cache_without_tensorrt_says_so(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:  # pragma: no cover - on a GPU machine
        pytest.skip("TensorRT is installed here")
    run = run_cli("--trt-cache", "--repo", str(_repo(tmp_path, None)), "--name", "m")
    assert run.rc != 0 and "TensorRT" in run.err
