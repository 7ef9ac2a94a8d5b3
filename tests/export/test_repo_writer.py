"""Repository writing without a model: config.pbtxt schema round trip, versions, staging."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError
from export.models import default_model_name
from export.repo_writer import ConfigSpec, build_config, choose_version, preferred_batches, staging
from modelrepo.config import format_config, parse_config, read_config


def test_preferred_batches_are_capped_at_max() -> None:
    assert preferred_batches(None, 32) == [8, 16]
    assert preferred_batches(None, 8) == [8]
    assert preferred_batches([16, 4, 64, 4], 32) == [4, 16]
    assert preferred_batches(None, 4) == [4]  # nothing fits: the max itself


def test_config_round_trips_through_the_schema() -> None:
    spec = ConfigSpec("m_trt", "tensorrt_plan", (3, 299, 299), 7, 16, (8, 16), {"source.weights": "random"}, gpu=True)
    cfg = parse_config(format_config(build_config(spec)))
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert list(cfg.input[0].dims) == [3, 299, 299] and list(cfg.output[0].dims) == [7]
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert cfg.parameters["source.weights"].string_value == "random"


def test_config_with_a_backend_has_no_platform() -> None:
    """Triton's OpenVINO backend: ``backend: "openvino"``, no platform, default model filename left empty."""
    spec = ConfigSpec("m_ov", "", (3, 224, 224), 5, 8, (8,), {"export.format": "openvino-ir"}, backend="openvino")
    text = format_config(build_config(spec))
    assert "platform" not in text and "default_model_filename" not in text
    cfg = parse_config(text)
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.default_model_filename == ""
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    with pytest.raises(ValueError, match="platform or a backend"):
        build_config(ConfigSpec("m", "onnxruntime_onnx", (3, 224, 224), 5, 8, (8,), {}, backend="openvino"))


def test_default_names() -> None:
    assert default_model_name("resnet50") == "resnet50"
    assert default_model_name("timm:resnetv2_50") == "timm_resnetv2_50"


def test_choose_version(tmp_path: Path) -> None:
    assert choose_version(tmp_path, ["a", "a_int8"], None) == 1
    (tmp_path / "a" / "2").mkdir(parents=True)
    (tmp_path / "a_int8" / "3").mkdir(parents=True)
    assert choose_version(tmp_path, ["a", "a_int8"], None) == 4  # one version number for the whole export
    assert choose_version(tmp_path, ["a"], 7) == 7
    with pytest.raises(ExportError, match="already exists"):
        choose_version(tmp_path, ["a"], 2)


def test_staging_commits_atomically_and_cleans_up(tmp_path: Path) -> None:
    spec = ConfigSpec("m", "onnxruntime_onnx", (3, 224, 224), 2, 8, (8,), {})
    with staging(tmp_path) as st:
        m = st.model("m", 1)
        (m.version_dir / "model.onnx").write_bytes(b"x")
        m.write(build_config(spec), ["a", "b"])
        st.commit()
    with staging(tmp_path) as st:
        m = st.model("m", 2)
        (m.version_dir / "model.onnx").write_bytes(b"y")
        m.write(build_config(spec), ["a", "b"])
        st.commit()
    with pytest.raises(RuntimeError), staging(tmp_path) as st:
        st.model("m", 3)
        raise RuntimeError("gate failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert read_config(tmp_path / "m").name == "m"


def test_staging_removes_a_repo_it_created(tmp_path: Path) -> None:
    repo = tmp_path / "new_repo"
    with pytest.raises(RuntimeError), staging(repo):
        raise RuntimeError("boom")
    assert not repo.exists()
