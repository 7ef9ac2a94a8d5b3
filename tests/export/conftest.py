"""Shared fixtures: each model is exported once per session into one repository; a photo classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from export import images
from export.models import ARCHS
from tests.export.helpers import Run, run_cli, run_subprocess


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_repo")


@pytest.fixture(scope="session")
def exports(repo: Path) -> dict[str, Run]:
    """resnet18 through a real ``python -m export`` subprocess, the others in-process."""
    runs = {"resnet18": run_subprocess("--arch", "resnet18", "--weights", "random", "--repo", str(repo))}
    for arch in ("resnext50_32x4d", "inception_v3", "googlenet"):
        runs[arch] = run_cli("--arch", arch, "--weights", "random", "--repo", str(repo),
                             "--max-batch-size", "16", "--preferred-batch", "4", "8", "64")
    return runs


@pytest.fixture(scope="session")
def photo_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A resnet18 checkpoint that classifies which sample photo an image was cut from, + labels.

    Random weights make a weak gate subject (a random ResNet predicts nearly the same class for every
    image, so agreement is trivially high). This one's predictions mean something: a random resnet18
    backbone with its BatchNorm statistics re-estimated on the sample photos and a logistic-regression
    head trained to tell the photos apart (its top-1 depends on the image, with clear margins, as a
    trained classifier's does).
    """
    photos = images.sample_photos()
    # Trained on crops/flips and on jittered variants (another seed than the check set's), so the
    # check images are mostly classified with clear margins, as a real classifier's inputs are.
    train = images.calibration_variants(photos, 6) + images.check_variants(photos, 6, seed=7)
    x = torch.from_numpy(images.to_batch(train, ARCHS["resnet18"].preprocess))
    y = torch.cat([torch.arange(len(photos)).repeat_interleave(6)] * 2)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(photos))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        model.fc, fc = torch.nn.Identity(), model.fc  # type: ignore[assignment]
        feats = model(x)
        model.fc = fc
    # Logistic-regression head on the frozen features: clear margins, like a trained classifier's.
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(fc(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("photo_classifier")
    ckpt, labels = d / "photo_classifier.pth", d / "labels.txt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    labels.write_text("".join(f"photo_{i}\n" for i in range(len(photos))))
    return ckpt, labels
