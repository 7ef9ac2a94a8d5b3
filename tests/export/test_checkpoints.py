"""Local checkpoints: the formats training code writes, custom classes, labels, malicious pickles."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import torchvision

from export.checkpoints import read_checkpoint
from export.errors import ExportError
from export.models import load_model
from modelrepo.config import get_params, read_config, read_labels
from tests.export.helpers import run_cli, snapshot

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=NUM_CLASSES).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": torch.tensor(0.1)}}, id="model"),
        pytest.param(lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, id="dataparallel"),
    ],
)
def test_checkpoint_formats(tmp_path: Path, state: dict[str, torch.Tensor], wrap) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state), path)
    loaded = read_checkpoint(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_custom_class_count_without_labels(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    loaded = load_model("resnet18", str(path))
    assert loaded.num_classes == NUM_CLASSES
    assert loaded.labels == [f"class_{i}" for i in range(NUM_CLASSES)]
    assert loaded.weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])


def test_checkpoint_of_another_arch_is_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    with pytest.raises(ExportError, match="does not match resnet34"):
        load_model("resnet34", str(path))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(ExportError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


class _Evil:
    """Unpickling this would create a marker file (a stand-in for any code an attacker wants run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "payload": _Evil(marker)}, path)
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(path), "--repo", str(repo))
    assert run.rc == 1
    assert "refusing to load" in run.err and "arbitrary code" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not marker.exists(), "the pickle's payload ran"
    assert snapshot(repo) == set()


def test_labels_mismatch_is_an_error(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(path), "--labels", str(labels), "--repo", str(repo))
    assert run.rc == 1
    assert "--labels has 3 names but checkpoint ckpt.pth has 7 classes" in run.err
    assert snapshot(repo) == set()


@pytest.mark.slow
def test_export_custom_classes_from_training_checkpoint(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "best.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 12}, path)
    labels = tmp_path / "classes.txt"
    names = ["cat", "dog", "bird", "fish", "horse", "sheep", "cow"]
    labels.write_text("\n".join(names) + "\n")
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(path), "--labels", str(labels), "--repo", str(repo),
                  "--name", "pets", "--version", "4")
    assert run.rc == 0, run.err
    assert (repo / "pets" / "4" / "model.onnx").is_file()
    assert read_labels(repo / "pets" / "labels.txt") == names
    cfg = read_config(repo / "pets")
    assert cfg.name == "pets" and list(cfg.output[0].dims) == [NUM_CLASSES]
    params = get_params(cfg)
    assert params["source.weights"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert params["source.num_classes"] == "7"
    # A second export of the same model gets the next free version and keeps the first.
    run = run_cli("--arch", "resnet18", "--weights", str(path), "--labels", str(labels), "--repo", str(repo),
                  "--name", "pets", "--no-simplify")
    assert run.rc == 0, run.err
    assert sorted(p.name for p in (repo / "pets").iterdir()) == ["4", "5", "config.pbtxt", "labels.txt"]


def test_timm_checkpoint_class_count_from_get_classifier(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnetv2_18", pretrained=False, num_classes=3)
    path = tmp_path / "timm.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = load_model("timm:resnetv2_18", str(path))
    assert loaded.num_classes == 3 and loaded.labels == ["class_0", "class_1", "class_2"]
    assert loaded.preprocess.interpolation == "bicubic"
