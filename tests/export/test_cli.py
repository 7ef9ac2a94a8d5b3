"""Command-line behaviour: --list, bad arguments, offline tags, parity failure; nothing half-written."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import export.pipeline
from modelrepo.config import get_params, read_config
from tests.export.helpers import Run, run_cli, snapshot


def test_list_shows_architectures_with_sizes_and_params() -> None:
    run = run_cli("--list")
    assert run.rc == 0, run.err
    lines = {line.split()[0]: line for line in run.out.splitlines() if line.strip()}
    assert "299x299" in lines["inception_v3"] and "342" in lines["inception_v3"]
    assert "224x224" in lines["resnet50"] and "25.6M" in lines["resnet50"]
    assert "11.7M" in lines["resnet18"]
    assert "6.6M" in lines["googlenet"]  # inference graph: no auxiliary heads
    for arch in ("resnet152", "resnext101_64x4d", "wide_resnet50_2", "timm:resnetv2_50"):
        assert arch in lines
    assert "timm:NAME" in run.out


def _fails(tmp_path: Path, *argv: str, rc: int | None = None) -> Run:
    """Run an export that must fail: non-zero exit, a one-line error, the repository untouched."""
    repo = tmp_path / "repo"
    before = snapshot(repo)
    run = run_cli(*argv) if "--repo" in argv else run_cli(*argv, "--repo", str(repo))
    assert run.rc != 0
    if rc is not None:
        assert run.rc == rc
    assert snapshot(repo) == before, "a failed export left files behind"
    assert run.err.strip(), "no error message on stderr"
    return run


def test_unknown_arch_lists_valid_ones(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "resnet9000", "--weights", "random", rc=2)
    assert "unknown architecture 'resnet9000'" in run.err
    assert "resnet50" in run.err and "inception_v3" in run.err and "timm:NAME" in run.err


def test_unknown_timm_model(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "timm:no_such_net", "--weights", "random", rc=2)
    assert "unknown timm model 'no_such_net'" in run.err


def test_missing_required_arguments() -> None:
    assert run_cli("--arch", "resnet18").rc == 2


@pytest.mark.parametrize("name", ["../evil", "Bad Name", "a/b", ".."])
def test_invalid_model_name(tmp_path: Path, name: str) -> None:
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "random", "--name", name)
    assert "invalid model name" in run.err
    assert not (tmp_path / "evil").exists()


def test_existing_version_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "resnet18" / "3").mkdir(parents=True)
    (repo / "resnet18" / "3" / "model.onnx").write_bytes(b"keep me")
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "random", "--version", "3", rc=1)
    assert "version 3 of model 'resnet18' already exists" in run.err
    assert (repo / "resnet18" / "3" / "model.onnx").read_bytes() == b"keep me"


def test_repo_that_is_a_file(tmp_path: Path) -> None:
    repo = tmp_path / "not_a_dir"
    repo.write_text("x")
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo))
    assert run.rc == 1 and run.err.startswith("error:") and repo.read_text() == "x"


def test_unknown_tag(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "IMAGENET9K_V9", rc=2)
    assert "IMAGENET1K_V1" in run.err


def test_missing_checkpoint(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", str(tmp_path / "nope.pth"), rc=1)
    assert "does not exist" in run.err


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no cached weights, whatever the machine running the tests has."""
    import torchvision.models._api as api

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)


@pytest.mark.usefixtures("offline")
def test_offline_tag_without_fallback_says_what_to_do(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "DEFAULT", rc=1)
    assert "cannot download" in run.err and "--weights /path/to/checkpoint.pth" in run.err
    assert len(run.err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_offline_tag_with_fallback_exports_random(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger="export"):
        run = run_cli("--arch", "resnet18", "--weights", "DEFAULT", "--fallback-random", "--repo", str(repo))
    assert run.rc == 0, run.err
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "MEANINGLESS" in warning and "RANDOM" in warning and len(warning.splitlines()) >= 4
    params = get_params(read_config(repo / "resnet18"))
    assert params["source.weights"] == "random"
    assert (repo / "resnet18" / "labels.txt").read_text().splitlines()[0] == "tench"


@pytest.mark.slow
def test_parity_failure_fails_the_export_and_writes_nothing(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.pipeline.ort_runner

    def perturbed(path: Path, threads: int = 2):  # type: ignore[no-untyped-def]
        run = real(path, threads)
        return lambda x: run(x) + np.float32(0.01)  # a bug in the exported graph, as seen from outside

    monkeypatch.setattr(export.pipeline, "ort_runner", perturbed)
    repo = tmp_path / "repo"
    repo.mkdir()
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "random", "--repo", str(repo), rc=1)
    assert "parity gate failed" in run.err and "nothing was written" in run.err
    assert "FAIL" in run.out  # the report table is still printed
    assert list(repo.iterdir()) == []


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_trt_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    run = _fails(tmp_path, "--arch", "resnet18", "--weights", "random", "--trt", "--precision", "fp16", rc=1)
    assert "TensorRT" in run.err and "--trt" in run.err
