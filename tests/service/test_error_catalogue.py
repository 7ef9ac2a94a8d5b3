"""The error catalogue (service.error_catalogue): every machine code of the error classes has its HTTP and gRPC
status and what-to-do text, renders as one Markdown section per code, and every error answer links to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from starlette.testclient import TestClient

from service import error_catalogue, errors
from service.config import Settings
from service.error_links import configure_docs_url, help_link
from service.grpc_api.status import grpc_status
from service.http.app import create_app
from service.http.error_render import error_body


def _all_subclasses(cls: type[errors.ServiceError]) -> set[type[errors.ServiceError]]:
    out: set[type[errors.ServiceError]] = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


ERROR_CLASSES = sorted(({errors.ServiceError} | _all_subclasses(errors.ServiceError)) - {errors.RemoteError},
                       key=lambda c: c.__name__)


@pytest.fixture(autouse=True)
def _repo_links() -> Iterator[None]:
    configure_docs_url(None)
    yield
    configure_docs_url(None)


def test_every_error_class_has_a_catalogue_entry_with_text() -> None:
    by_code = {e.code: e for e in error_catalogue.entries()}
    assert len(by_code) == len(error_catalogue.entries())  # one entry per code
    for cls in ERROR_CLASSES:
        entry = by_code[cls.code]
        assert entry.http_status == cls.status and entry.title and len(entry.action) > 20, cls
    assert set(by_code) == {c.code for c in ERROR_CLASSES}


def test_an_error_code_without_text_fails_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(error_catalogue._TEXT, "queue_full")
    with pytest.raises(LookupError, match="queue_full.*QueueFull"):
        error_catalogue.entries()


def test_grpc_status_is_the_one_the_grpc_server_answers_with() -> None:
    by_code = {e.code: e for e in error_catalogue.entries()}
    for cls in ERROR_CLASSES:
        code, message, trailing = grpc_status(cls("boom"))
        assert by_code[cls.code].grpc_status == code.name, cls
        assert message == f"boom (see {help_link(cls.code)})"
        assert ("imgserve-error-code", cls.code) in trailing
        assert ("imgserve-error-help", help_link(cls.code)) in trailing
    assert by_code["queue_full"].grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.name
    assert by_code["model_not_found"].grpc_status == "NOT_FOUND"


def test_render_markdown_has_one_section_per_code_with_underscored_anchors() -> None:
    text = error_catalogue.render_markdown()
    lines = text.splitlines()
    codes = [e.code for e in error_catalogue.entries()]
    assert [ln[3:] for ln in lines if ln.startswith("## ")] == codes
    assert not any(ln.startswith("# ") for ln in lines)  # the page's title is the docs site's
    assert "HTTP 404 · gRPC `NOT_FOUND`" in text
    markdown = pytest.importorskip("markdown")
    md = markdown.Markdown(extensions=["toc", "tables"])
    md.convert(text)
    assert [t["id"] for t in md.toc_tokens] == codes  # the anchors help_link points to


def test_help_link_points_to_the_repository_page_or_the_docs_site() -> None:
    assert help_link("model_not_found") == "docs/reference/errors.md#model_not_found"
    configure_docs_url("https://docs.example.org/imgserve/")
    assert help_link("queue_full") == "https://docs.example.org/imgserve/reference/errors/#queue_full"
    assert json.loads(error_body("server_busy", "busy"))["error"] == {
        "code": "server_busy", "message": "busy",
        "help": "https://docs.example.org/imgserve/reference/errors/#server_busy"}


def test_docs_url_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_DOCS_URL", "https://env.example.org")
    assert Settings().docs_url == "https://env.example.org"
    monkeypatch.delenv("IMGSERVE_DOCS_URL")
    assert Settings(_cli_parse_args=["--docs-url", "https://flag.example.org"]).docs_url == "https://flag.example.org"


def _client(tmp_path: Path, **kw: Any) -> TestClient:
    return TestClient(create_app(Settings(model_repo=tmp_path, warmup=False, workers=1, grpc_port=0, **kw)))


def test_a_404_over_http_carries_its_help_link(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        r = client.post("/classify?model=nope", content=b"\xff\xd8not-a-jpeg", headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 404, r.text
        assert r.json()["error"] == {"code": "model_not_found", "message": r.json()["error"]["message"],
                                     "help": "docs/reference/errors.md#model_not_found"}
        v2 = client.get("/v2/models/nope")
        assert v2.status_code == 404 and isinstance(v2.json()["error"], str)  # KServe's shape stays a string
        assert v2.json()["error"].endswith("(see docs/reference/errors.md#model_not_found)")


def test_the_docs_url_setting_reaches_the_answers(tmp_path: Path) -> None:
    with _client(tmp_path, docs_url="https://docs.example.org") as client:
        r = client.post("/classify?model=nope", content=b"x", headers={"Content-Type": "image/jpeg"})
        assert r.json()["error"]["help"] == "https://docs.example.org/reference/errors/#model_not_found"
