"""Fixtures shared by the service, v2 and loadtest tests: real photos and a real exported model.

Two tiers: ``make test`` runs everything; ``make test-fast`` only the tests that start no server and
export no model (``-m "not slow and not integration"``, under a minute). A test is marked
``integration`` here when it asks, directly or through another fixture, for one that exports a model
(``INTEGRATION_FIXTURES``), so nobody has to remember the mark. Imports stay inside the fixtures: a
unit test pays for Pillow or scikit-image only when it uses them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

#: fixtures that export a model (and so every server fixture built on them): their tests are integration tests
INTEGRATION_FIXTURES = frozenset({"model_repo", "exports", "photo_classifier"})


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Every log names the CPU kind that ran it: INT8 kernels, BF16 and speed differ between kinds."""
    from modelrepo.cpu import this_cpu

    cpu = this_cpu()
    int8 = "exact (VNNI/AMX)" if cpu.int8_exact else "saturating (no VNNI)"
    return [f"cpu: {cpu.describe()}; INT8 dot products {int8}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def jpeg_bytes(arr: object, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    from skimage import data as skdata

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
