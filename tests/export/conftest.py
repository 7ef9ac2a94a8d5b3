"""Shared fixtures: each model is exported once per session into one repository."""

from __future__ import annotations

from pathlib import Path

import pytest

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
