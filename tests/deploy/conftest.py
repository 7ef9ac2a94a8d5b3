"""Shared helpers for the deployment tests: the app's real routes and Kubernetes schema validation."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import Match

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Kubernetes versions whose schemas every object must pass: the oldest still commonly run, the newest.
K8S_VERSIONS = ("1.29.0", "1.37.0")


@pytest.fixture(scope="session")
def app_serves() -> Callable[[str, str], bool]:
    """``app_serves(method, path)``: whether the service's own app has a route for that request."""
    from service.http.app import create_app

    app = create_app()  # no lifespan runs: nothing loads

    def serves(method: str, path: str) -> bool:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {},
                 "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.routes)

    return serves


@pytest.fixture(scope="session")
def app_port() -> int:
    from service.config import Settings

    return int(Settings.model_fields["port"].default)


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` or Debian's ``kustomize build``, whichever is installed."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(path: Path) -> list[dict[str, Any]]:
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip("neither kubectl nor kustomize is installed "
                    "(kubectl: google-cloud-cli's apt repository; or a kustomize binary)")
    out = subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate_k8s(obj: dict[str, Any]) -> None:
    """Validate one object against the Kubernetes JSON schemas (offline, strict: unknown fields fail)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')} on Kubernetes {version}: {e}") from e


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: builds images and runs the compose stack (skips without Docker)")
