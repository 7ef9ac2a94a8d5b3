"""The documentation site builds strictly and offline, its generated reference pages cover the code, the README
stays a short entry point, and nothing in the repository points outside it."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` into a temporary folder: a broken link or anchor, a missing page or a page left
    out of the nav fails it. No network is needed (no web fonts, no CDN, no plugin that fetches)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a warning
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _page(site: Path, path: str) -> str:
    return html.unescape((site / path / "index.html").read_text())


def test_every_setting_is_in_the_configuration_reference(site: Path) -> None:
    from service.config import Settings

    page = _page(site, "reference/configuration")
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in page and f"IMGSERVE_{name.upper()}" in page, name


def test_every_metric_is_in_the_metrics_reference(site: Path) -> None:
    from service.metrics import Metrics

    page = _page(site, "reference/metrics")
    names = {f.name + ("_total" if f.type == "counter" else "") for f in Metrics().registry.collect()}
    names |= {"gpu_utilization_ratio", "gpu_memory_used_bytes", "gpu_memory_total_bytes"}
    assert "inference_requests_total" in names
    for name in sorted(names):
        assert f"<code>{name}</code>" in page, name


def _service_error_codes() -> set[str]:
    from service.errors import ServiceError

    codes, todo = set(), [ServiceError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return codes


def test_every_error_code_is_in_the_catalogue(site: Path) -> None:
    page = _page(site, "reference/errors")
    codes = _service_error_codes()
    assert {"bad_image", "model_not_found", "queue_full"} <= codes
    for code in sorted(codes):
        assert re.search(rf'<h2 id="{re.escape(code)}"', page), code


def test_every_route_is_in_the_http_reference(site: Path) -> None:
    import json

    schema = json.loads((site / "openapi.json").read_text())
    page = _page(site, "reference/http-api")
    assert "/classify" in schema["paths"]
    for path in schema["paths"]:
        assert f"<code>{path}</code>" in page, path


def test_the_pictures_are_in_the_site(site: Path) -> None:
    for picture in ("images/architecture.svg", "bench/2026-11-27-amd-epyc-zen5-2vcpu.png",
                    "bench/2026-11-28-locust-ramp-resnet50_int8.png"):
        assert (site / picture).is_file(), picture
    assert 'src="../../bench/2026-11-27-amd-epyc-zen5-2vcpu.png"' in _page(site, "development/benchmarks")
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_readme_is_short_and_names_the_two_set_up_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "    make serve    #" in setup and "    make test     #" in setup
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # relative links into the docs resolve
        assert (ROOT / link).is_file(), link


def test_nothing_points_outside_the_repository() -> None:
    """The design contract lives in docs/ now: no tracked file refers to a file beside the repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    outside = re.compile(r"\.\./shared|DESIGN\.md|STYLE\.md")
    me = Path(__file__).resolve()
    hits = []
    for name in filter(None, files):
        path = ROOT / name
        if path.resolve() == me or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not hits, hits
