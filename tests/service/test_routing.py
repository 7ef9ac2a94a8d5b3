"""``--runtime auto`` on every availability case (fake probes over the real registry's ranks): which
runtime serves an ONNX model, its TensorRT plan and its TorchScript variant, and which of them serves
the model's name (service.engine.routing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelrepo.errors import RepositoryError
from service.engine.routing import Served, routes
from service.runtimes import registry
from service.runtimes.registry import RuntimeInfo, choose

ONNX, PLAN, PT = "onnxruntime_onnx", "tensorrt_plan", "pytorch_libtorch"
FAMILY = {  # the exporter's three formats of one model: name -> (kind, params)
    "resnet50": (ONNX, {}),
    "resnet50_trt": (PLAN, {"serve.fallback_model": "resnet50"}),
    "resnet50_pt": (PT, {"serve.variant_of": "resnet50"}),
}


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bool]]:
    """The real registry's runtimes and ranks, with probes answering from ``have`` (set by the test)."""
    have: dict[str, bool] = {}
    real = registry.registered()

    def probe(name: str):  # type: ignore[no-untyped-def]
        def p(device: str) -> str | None:
            if device == "cuda" and not have.get("gpu"):
                return "no NVIDIA GPU is visible"
            if name == "onnxruntime" and device == "cuda" and not have.get("ort-gpu"):
                return "this onnxruntime build has no CUDA execution provider"
            return None if have.get(name, name in ("onnxruntime", "pytorch")) else f"{name} is not installed"
        return p

    table = {n: RuntimeInfo(i.name, i.serves, i.ranks, i.target, probe(n), i.why) for n, i in real.items()}
    monkeypatch.setattr(registry, "_REGISTRY", table)
    monkeypatch.setattr(registry, "_logged", set())
    yield have


def serve_family(device: str = "auto") -> tuple[dict[str, Served], dict[str, tuple[str, str]]]:
    loaded: dict[str, Served] = {}
    for name, (kind, params) in FAMILY.items():
        try:
            c = choose(kind, "auto", device)
        except RepositoryError:
            continue  # e.g. a plan with no TensorRT here: not loaded
        loaded[name] = Served(c.info.name, c.device, params)
    return loaded, routes(loaded, {n: i.ranks for n, i in registry.registered().items()})


def who_serves(name: str, loaded: dict[str, Served], table: dict[str, tuple[str, str]]) -> tuple[str, str, str]:
    target = table[name][0] if name in table else name
    return target, loaded[target].runtime, loaded[target].device


@pytest.mark.parametrize(
    ("have", "expected"),
    [
        # a GPU with everything: the plan (and the ONNX model builds its own engine into .engines/)
        ({"gpu": True, "tensorrt": True, "ort-gpu": True, "openvino": True},
         ("resnet50", "tensorrt", "cuda")),
        # no TensorRT: ONNX Runtime's CUDA provider serves the ONNX model itself
        ({"gpu": True, "ort-gpu": True}, ("resnet50", "onnxruntime", "cuda")),
        # only torch on a GPU machine (the lent H100/H200): the TorchScript variant on CUDA
        ({"gpu": True}, ("resnet50_pt", "pytorch", "cuda")),
        ({"gpu": True, "openvino": True}, ("resnet50_pt", "pytorch", "cuda")),
        # a CPU machine: OpenVINO, else ONNX Runtime; PyTorch CPU never wins
        ({"openvino": True}, ("resnet50", "openvino", "cpu")),
        ({}, ("resnet50", "onnxruntime", "cpu")),
    ],
)
def test_auto_picks_the_best_runtime_for_the_name(machine: dict[str, bool], have: dict[str, bool],
                                                  expected: tuple[str, str, str]) -> None:
    machine.update(have)
    loaded, table = serve_family()
    assert who_serves("resnet50", loaded, table) == expected
    # a variant asked for by its own name is always itself
    assert all(name not in table for name in ("resnet50_trt", "resnet50_pt"))


def test_the_route_says_why(machine: dict[str, bool]) -> None:
    machine.update({"gpu": True})
    loaded, table = serve_family()
    variant, why = table["resnet50"]
    assert variant == "resnet50_pt"
    assert "pytorch on cuda" in why and "onnxruntime on cpu" in why and "TensorRT > ONNX Runtime > PyTorch" in why


def test_plan_beats_the_variants_when_the_base_runs_on_the_cpu(machine: dict[str, bool]) -> None:
    loaded = {
        "resnet50": Served("onnxruntime", "cpu", {}),
        "resnet50_trt": Served("tensorrt", "cuda", {"serve.fallback_model": "resnet50"}),
        "resnet50_pt": Served("pytorch", "cuda", {"serve.variant_of": "resnet50"}),
    }
    table = routes(loaded, {n: i.ranks for n, i in registry.registered().items()})
    assert table["resnet50"][0] == "resnet50_trt"
    del loaded["resnet50"]  # the base failed to load: its best variant still serves its name
    assert routes(loaded, {n: i.ranks for n, i in registry.registered().items()})["resnet50"][0] == "resnet50_trt"


def test_forcing_a_device_or_runtime_is_obeyed(machine: dict[str, bool]) -> None:
    machine.update({"gpu": True, "ort-gpu": True, "openvino": True})
    assert choose(PT, "auto", "cpu").device == "cpu"
    assert choose(ONNX, "onnxruntime", "cpu").info.name == "onnxruntime"
    with pytest.raises(RepositoryError, match="does not serve"):
        choose(PT, "openvino", "auto")


def test_the_manager_serves_a_name_through_its_route(machine: dict[str, bool]) -> None:
    """ModelManager.get: a routed name reaches the variant; an explicit version or the variant's own name
    does not move; /models's route reason comes from the same table."""
    from types import SimpleNamespace

    from service.config import Settings
    from service.engine.manager import ModelManager
    from service.metrics import Metrics

    def inst(runtime: str, device_kind: str, params: dict[str, str]) -> SimpleNamespace:
        rt = SimpleNamespace(name=runtime, device_kind=device_kind)
        return SimpleNamespace(runtime=rt, entry=SimpleNamespace(params=params), version=1)

    manager = ModelManager(Settings(), Metrics())
    manager._instances = {
        "resnet50": {1: inst("onnxruntime", "cpu", {})},
        "resnet50_pt": {1: inst("pytorch", "gpu", {"serve.variant_of": "resnet50"})},
    }
    manager._reroute()
    assert manager.get("resnet50") is manager._instances["resnet50_pt"][1]
    assert manager.get("resnet50", "1") is manager._instances["resnet50"][1]  # a version pins the model itself
    assert manager.get("resnet50_pt") is manager._instances["resnet50_pt"][1]
    assert "pytorch on cuda" in manager.routes["resnet50"][1]
    forced = ModelManager(Settings(runtime="onnxruntime"), Metrics())  # a forced runtime never reroutes
    forced._instances = manager._instances
    forced._reroute()
    assert forced.routes == {} and forced.get("resnet50") is manager._instances["resnet50"][1]
