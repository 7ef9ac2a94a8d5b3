"""Fixtures shared by the service, v2 and loadtest tests: real photos and a real exported model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata


def jpeg_bytes(arr: object, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {
        "chelsea.jpg": jpeg_bytes(skdata.chelsea()),
        "coffee.jpg": jpeg_bytes(skdata.coffee()),
        "astronaut.jpg": jpeg_bytes(skdata.astronaut()),
    }


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 with random weights, exported by `python -m export` (max batch 8)."""
    from export.cli import main

    repo = tmp_path_factory.mktemp("model_repo")
    rc = main(["--arch", "resnet18", "--weights", "random", "--repo", str(repo), "--max-batch-size", "8",
               "--preferred-batch", "4", "8"])
    assert rc == 0
    return repo
