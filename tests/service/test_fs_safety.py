"""Filesystem safety: model names and versions from requests and load calls never leave the repository,
and a model folder, version folder or file that is a symlink pointing outside it is refused at load."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from modelrepo.config import check_model_name, check_version, read_config, write_config
from modelrepo.errors import InvalidModelName, RepositoryError, VersionNotFound
from modelrepo.layout import check_inside, scan_model
from service.errors import ModelNotFound, as_service_error
from tests.service.conftest import API_KEY, Server, start_server

ADMIN_KEY = "fs-admin-key"
MODEL = "resnet18"
HOSTILE_NAMES = [
    "../x", "..", ".", "a/b", "%2e%2e", "..%2fx", "/etc/passwd", "/tmp", "a\x00b", "\x00", "x" * 300,
    "ｒesnet18", "resnet１８", "resnet18\u200b", "RESNET18", "resnet18/../resnet18", "~", "",
    f"../outside/{MODEL}",
]
HOSTILE_VERSIONS = ["../1", "..", "1/../1", "²", "１", "٣", "-1", "+1", " 1", "1.0", "9" * 5000, "0x1", "%2e%2e"]


# -- unit: names, versions, containment ------------------------------------------------------
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_check_model_name_refuses_hostile_names(name: str) -> None:
    with pytest.raises(InvalidModelName) as e:
        check_model_name(name)
    assert as_service_error(e.value).status == 422 and len(e.value.message) < 400


@pytest.mark.parametrize("name", [MODEL, "resnet50_trt", "a.b-c_1", "x" * 128])
def test_check_model_name_accepts_repository_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_check_version_refuses_non_ascii_digits(version: str) -> None:
    with pytest.raises(VersionNotFound) as e:
        check_version(version)
    assert isinstance(as_service_error(e.value), ModelNotFound)  # answered 404 model_not_found


def test_check_version_accepts_digits_and_latest() -> None:
    assert check_version("1") == "1" and check_version("0012") == "0012"
    assert check_version(None) is None and check_version("") is None


def test_check_inside(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "m").mkdir(parents=True)
    outside.mkdir()
    (root / "in_link").symlink_to(root / "m")
    (root / "out_link").symlink_to(outside)
    assert check_inside(root / "in_link", root, "x") == (root / "m").resolve()
    for p in (root / "out_link", root / "m" / ".." / ".." / "outside"):
        with pytest.raises(RepositoryError, match="outside the model repository"):
            check_inside(p, root, "model folder")


# -- a repository with symlinks pointing out of it -------------------------------------------
def _variant(src: Path, dest: Path, name: str) -> Path:
    """A copy of model folder ``src`` at ``dest`` named ``name`` (config.pbtxt's name too)."""
    shutil.copytree(src, dest, symlinks=True)
    cfg = read_config(dest)
    cfg.name = name
    write_config(dest, cfg)
    return dest


@pytest.fixture(scope="module")
def hostile_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``resnet18`` (its model file a symlink to a store inside the repository: allowed), and models whose
    folder, version folder or model file is a symlink out of the repository; ``outside/`` holds a valid
    model reachable only by traversal."""
    tmp = tmp_path_factory.mktemp("fs")
    repo, outside = tmp / "repo", tmp / "outside"
    repo.mkdir()
    src = model_repo / MODEL
    _variant(src, outside / MODEL, MODEL)
    _variant(src, repo / MODEL, MODEL)
    store = repo / ".store"
    store.mkdir()
    (repo / MODEL / "1" / "model.onnx").rename(store / "model.onnx")
    (repo / MODEL / "1" / "model.onnx").symlink_to(Path("../../.store/model.onnx"))

    (repo / "escaped_folder").symlink_to(_variant(src, outside / "escaped_folder", "escaped_folder"))
    ver = _variant(src, repo / "escaped_version", "escaped_version")
    shutil.rmtree(ver / "1")
    (ver / "1").symlink_to(outside / MODEL / "1")
    file = _variant(src, repo / "escaped_file", "escaped_file")
    (file / "1" / "model.onnx").unlink()
    (file / "1" / "model.onnx").symlink_to(outside / MODEL / "1" / "model.onnx")
    return repo


def test_scan_refuses_symlink_escapes(hostile_repo: Path) -> None:
    assert scan_model(hostile_repo / MODEL).model_file(1).is_file()  # a link inside the repository is fine
    with pytest.raises(RepositoryError, match="outside the model repository"):
        scan_model(hostile_repo / "escaped_folder")
    for name in ("escaped_version", "escaped_file"):
        entry = scan_model(hostile_repo / name)
        with pytest.raises(RepositoryError, match="outside the model repository"):
            entry.model_file(1)


def test_labels_file_outside_is_refused(hostile_repo: Path, tmp_path: Path) -> None:
    model = _variant(hostile_repo / MODEL, tmp_path / "repo" / "labels_escape", "labels_escape")
    (tmp_path / "secret.txt").write_text("secret\n")
    cfg = read_config(model)
    cfg.output[0].label_filename = "../../secret.txt"
    write_config(model, cfg)
    with pytest.raises(RepositoryError, match="labels file"):
        scan_model(model).labels()


@pytest.fixture(scope="module")
def fs_server(hostile_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(hostile_repo, tmp_path_factory.mktemp("fs-srv"), "--api-key", API_KEY,
                     "--admin-api-key", ADMIN_KEY, wait_ready=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = {m["name"]: m["state"] for m in httpx.get(f"{s.url}/models", headers={"X-API-Key": API_KEY},
                                                           timeout=10).json()["models"]}
        if states and all(st not in ("pending", "loading") for st in states.values()):
            break
        time.sleep(0.2)
    yield s
    s.stop()


def _admin(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}, timeout=60)


@pytest.mark.slow
def test_symlink_escapes_are_not_ready_with_the_reason(fs_server: Server) -> None:
    with _admin(fs_server) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert models[MODEL]["state"] == "ready"
        for name in ("escaped_folder", "escaped_version", "escaped_file"):
            assert models[name]["state"].startswith("failed:"), models[name]
            assert "outside the model repository" in models[name]["state"]
            r = c.post("/classify", params={"model": name}, content=b"x", headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
            r = c.post(f"/models/{name}/load")  # an explicit load call is refused the same way
            assert r.status_code >= 400 and "outside the model repository" in r.json()["error"]["message"]
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and "escaped_file" in ready.text
        assert c.post("/classify", params={"model": MODEL}, content=b"x",
                      headers={"Content-Type": "image/jpeg"}).status_code == 400  # the good model serves


@pytest.mark.slow
def test_hostile_names_from_requests_never_leave_the_repository(fs_server: Server) -> None:
    """?model=, /models/{name}, load/unload and /v2/models/{name}: 404/422, and the valid model that sits
    outside the repository (reachable only by traversal) is never loaded nor listed."""
    with _admin(fs_server) as c:
        for name in [*(n for n in HOSTILE_NAMES if n), "outside", ".store"]:
            seg = quote(name, safe="").replace(".", "%2E")  # dots too: a client would resolve ".."
            answers = [
                c.post("/classify", params={"model": name}, content=b"x", headers={"Content-Type": "image/jpeg"}),
                c.get(f"/models/{seg}"), c.post(f"/models/{seg}/load"), c.post(f"/models/{seg}/unload"),
                c.get(f"/v2/models/{seg}"), c.get(f"/v2/models/{seg}/ready"),
            ]
            for r in answers:
                assert r.status_code in (404, 422), (
                    name, r.request.method, r.request.url, r.status_code, r.text[:300])
        names = [m["name"] for m in c.get("/models").json()["models"]]
        assert sorted(names) == sorted([MODEL, "escaped_folder", "escaped_version", "escaped_file"])


@pytest.mark.slow
def test_hostile_versions_from_requests_are_404(fs_server: Server) -> None:
    with _admin(fs_server) as c:
        for v in HOSTILE_VERSIONS:
            seg = quote(v, safe="").replace(".", "%2E")
            for r in (
                c.post("/classify", params={"model": MODEL, "version": v}, content=b"x",
                       headers={"Content-Type": "image/jpeg"}),
                c.get(f"/v2/models/{MODEL}/versions/{seg}"), c.get(f"/v2/models/{MODEL}/versions/{seg}/ready"),
                c.get(f"/v2/models/{MODEL}/versions/{seg}/config"),
                c.post(f"/v2/models/{MODEL}/versions/{seg}/infer", content=b"{}"),
            ):
                assert r.status_code == 404, (v, r.request.url, r.status_code, r.text[:300])
        assert c.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
