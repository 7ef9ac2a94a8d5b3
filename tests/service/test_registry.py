"""The runtime registry with fake runtimes: each kind x preference x availability case, and start-up checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from modelrepo.config import model_kind
from modelrepo.errors import RepositoryError
from service.config import Settings
from service.errors import ConfigError
from service.runtimes import registry
from service.runtimes.registry import RuntimeInfo, candidates, choose, registered, require


def fake(name: str, serves: tuple[str, ...], ranks: dict[str, int], broken: dict[str, str] | None = None,
         ) -> RuntimeInfo:
    problems = broken or {}
    return RuntimeInfo(name, serves, ranks, "tests.service.test_registry:FakeRuntime", lambda d: problems.get(d))


class FakeRuntime:
    name = "fake"


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, RuntimeInfo]]:
    """An empty registry the test fills; the real one is restored afterwards."""
    table: dict[str, RuntimeInfo] = {}
    monkeypatch.setattr(registry, "_REGISTRY", table)
    monkeypatch.setattr(registry, "_logged", set())
    yield table


def install(table: dict[str, RuntimeInfo], *infos: RuntimeInfo) -> None:
    for i in infos:
        table[i.name] = i


ONNX, PLAN, IR = "onnxruntime_onnx", "tensorrt_plan", "openvino"


def standard(table: dict[str, RuntimeInfo], *, no_ov: bool = False, no_gpu: bool = False) -> None:
    gpu_down = {"cuda": "no NVIDIA GPU is visible"} if no_gpu else {}
    install(
        table,
        fake("tensorrt", (PLAN,), {"cuda": 0}, gpu_down),
        fake("openvino", (ONNX, IR), {"cpu": 0}, {"cpu": "the openvino package is not installed"} if no_ov else {}),
        fake("onnxruntime", (ONNX,), {"cuda": 1, "cpu": 1}, gpu_down),
    )


@pytest.mark.parametrize(
    ("kind", "preference", "device", "no_ov", "no_gpu", "expected"),
    [
        # auto on a CPU: OpenVINO first, ONNX Runtime when OpenVINO is missing
        (ONNX, "auto", "cpu", False, True, ("openvino", "cpu")),
        (ONNX, "auto", "cpu", True, True, ("onnxruntime", "cpu")),
        (ONNX, "auto", "auto", False, True, ("openvino", "cpu")),
        # a GPU is tried first when --device auto
        (ONNX, "auto", "auto", False, False, ("onnxruntime", "cuda")),
        (PLAN, "auto", "auto", False, False, ("tensorrt", "cuda")),
        # forcing a runtime
        (ONNX, "onnxruntime", "cpu", False, True, ("onnxruntime", "cpu")),
        (ONNX, "onnxruntime", "auto", False, True, ("onnxruntime", "cpu")),
        (ONNX, "openvino", "auto", False, False, ("openvino", "cpu")),
        # OpenVINO IR: only OpenVINO serves it
        (IR, "auto", "auto", False, False, ("openvino", "cpu")),
    ],
)
def test_choice(fakes: dict[str, RuntimeInfo], kind: str, preference: str, device: str, no_ov: bool,
                no_gpu: bool, expected: tuple[str, str]) -> None:
    standard(fakes, no_ov=no_ov, no_gpu=no_gpu)
    c = choose(kind, preference, device)
    assert (c.info.name, c.device) == expected
    assert c.reason.startswith("auto: " if preference == "auto" else f"--runtime {preference}")


@pytest.mark.parametrize(
    ("kind", "preference", "device", "no_ov", "no_gpu", "message"),
    [
        (PLAN, "auto", "cpu", False, False, "no runtime can serve this tensorrt_plan model here with --device cpu"),
        (PLAN, "auto", "auto", False, True, "tensorrt on cuda: no NVIDIA GPU is visible"),
        (ONNX, "openvino", "cpu", True, True, "openvino on cpu: the openvino package is not installed"),
        (IR, "auto", "auto", True, True, "openvino on cpu: the openvino package is not installed"),
        (PLAN, "onnxruntime", "auto", False, False, "--runtime onnxruntime does not serve 'tensorrt_plan' models"),
        (IR, "onnxruntime", "auto", False, False, "(these do: openvino)"),
        ("pytorch_libtorch", "auto", "auto", False, False, "no registered runtime serves 'pytorch_libtorch'"),
    ],
)
def test_no_runtime_is_a_clear_model_error(fakes: dict[str, RuntimeInfo], kind: str, preference: str,
                                           device: str, no_ov: bool, no_gpu: bool, message: str) -> None:
    standard(fakes, no_ov=no_ov, no_gpu=no_gpu)
    with pytest.raises(RepositoryError) as e:
        choose(kind, preference, device)
    assert message in e.value.message


def test_auto_falls_back_with_one_log_line(fakes: dict[str, RuntimeInfo], caplog: pytest.LogCaptureFixture) -> None:
    standard(fakes, no_ov=True, no_gpu=True)
    with caplog.at_level(logging.INFO, logger="service.runtimes.registry"):
        for _ in range(3):
            assert choose(ONNX, "auto", "cpu").info.name == "onnxruntime"
    lines = [r.getMessage() for r in caplog.records if "openvino" in r.getMessage()]
    assert lines == ["runtime openvino on cpu: the openvino package is not installed (skipped for "
                     "onnxruntime_onnx models)"]


def test_candidates_rank_per_device(fakes: dict[str, RuntimeInfo]) -> None:
    standard(fakes)
    ok, skipped = candidates(ONNX, "auto", "auto")
    assert [(c.info.name, c.device) for c in ok] == [("onnxruntime", "cuda"), ("openvino", "cpu"),
                                                      ("onnxruntime", "cpu")]
    assert skipped == []
    assert "(openvino > onnxruntime)" in ok[1].reason


def test_a_new_runtime_is_one_registration(fakes: dict[str, RuntimeInfo]) -> None:
    standard(fakes, no_gpu=True)
    registry.register(fake("pytorch", ("pytorch_libtorch",), {"cpu": 0}))
    assert choose("pytorch_libtorch").info.name == "pytorch"
    assert isinstance(choose("pytorch_libtorch").info.create(), FakeRuntime)


def test_require_at_start(fakes: dict[str, RuntimeInfo]) -> None:
    standard(fakes, no_ov=True, no_gpu=True)
    require("auto")
    require("onnxruntime")
    with pytest.raises(ConfigError, match="--runtime openvino cannot run on this machine .*openvino package"):
        require("openvino")
    with pytest.raises(ConfigError, match="not a registered runtime"):
        require("cobol")


def test_model_kind_from_platform_or_backend() -> None:
    assert model_kind("onnxruntime_onnx", "") == ONNX
    assert model_kind("", "onnxruntime") == ONNX
    assert model_kind("", "openvino") == IR
    assert model_kind("tensorrt_plan", "") == PLAN


def test_real_registry_on_this_machine() -> None:
    """What ships: three runtimes; an ONNX model on a CPU-only machine goes to OpenVINO."""
    assert set(registry.registered()) >= {"onnxruntime", "openvino", "tensorrt"}
    c = choose(ONNX, "auto", "cpu")
    assert (c.info.name, c.device) == ("openvino", "cpu")
    with pytest.raises(ValueError, match="unknown runtime 'torch'"):
        Settings(runtime="torch")
    assert Settings(runtime="openvino").runtime == "openvino"


def test_a_runtime_never_run_by_the_projects_tests_says_so() -> None:
    """TensorRT ranks first on a GPU but has never run here: /models and the log carry the registry's word."""
    untested = {name for name, info in registered().items() if info.untested}
    assert untested == {"tensorrt"}
    assert "UNTESTED" in registered()["tensorrt"].untested
