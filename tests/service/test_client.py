"""`python -m service.client` against a real server: table and JSON output, paths, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service import client
from tests.service.conftest import API_KEY, ROOT, Server, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, bytes]) -> Path:
    d = tmp_path_factory.mktemp("images")
    for name, data in photos.items():
        (d / name).write_bytes(data)
    (d / "nested").mkdir()
    (d / "nested" / "again.jpg").write_bytes(photos["coffee.jpg"])
    (d / "notes.txt").write_text("not an image")
    return d


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = client.main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_table_output(server: Server, images: Path) -> None:
    rc, out, err = run(str(images / "chelsea.jpg"), "--url", server.url, "--api-key", API_KEY, "--top-k", "3")
    assert rc == client.OK, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{images / 'chelsea.jpg'}  (resnet18 v1; queue ")
    assert "preprocess" in lines[0] and "infer" in lines[0]
    assert lines[1].split() == ["#", "score", "label", "index"]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert all(r.split()[1].endswith("%") for r in rows)
    assert "random weights" in err  # the warning goes to stderr, once


def test_json_directory_and_glob(server: Server, images: Path) -> None:
    rc, out, err = run(str(images), str(images / "*.jpg"), "--url", server.url, "--api-key", API_KEY,
                       "--json", "--top-k", "2")
    assert rc == client.OK, err
    body = json.loads(out)
    files = [Path(x["file"]).name for x in body]
    # directory (recursive, images only, sorted), then the glob's matches already seen are dropped
    assert files == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "again.jpg"]
    for x in body:
        assert x["status"] == 200 and x["model"] == "resnet18" and len(x["predictions"]) == 2
        assert set(x["server_timing"]) == {"queue", "preprocess", "infer"}
        assert "random weights" in x["warning"]
    assert body[2]["predictions"] == body[3]["predictions"]  # the same photo twice


def test_many_images_concurrently_keep_order(server: Server, images: Path, tmp_path: Path,
                                             photos: dict[str, bytes]) -> None:
    names = list(photos)
    for i in range(12):
        (tmp_path / f"img{i:02d}.jpg").write_bytes(photos[names[i % 3]])
    rc, out, err = run(str(tmp_path), "--url", server.url, "--api-key", API_KEY, "--json", "--concurrency", "6",
                       "--top-k", "1")
    assert rc == client.OK, err
    body = json.loads(out)
    assert [Path(x["file"]).name for x in body] == [f"img{i:02d}.jpg" for i in range(12)]
    tops = [x["predictions"][0]["index"] for x in body]
    assert tops == [tops[i % 3] for i in range(12)]


def test_bad_image_is_a_client_error_with_the_service_message(server: Server, images: Path,
                                                              tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    rc, out, err = run(str(images / "chelsea.jpg"), str(bad), "--url", server.url, "--api-key", API_KEY)
    assert rc == client.CLIENT_ERROR
    assert "chelsea.jpg  (resnet18" in out  # the good image is still reported
    assert f"{bad}: error: HTTP 400 bad_image:" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "nope"], "HTTP 404 model_not_found: unknown model 'nope'"),
        (["--top-k", "5000"], "HTTP 422 bad_parameter: top_k=5000 is more than the model's 1000 classes"),
        (["--api-key", "wrong"], "HTTP 401 unauthorized: missing or wrong API key"),
    ],
)
def test_4xx_answers_exit_2(server: Server, images: Path, extra: list[str], needle: str) -> None:
    argv = [str(images / "coffee.jpg"), "--url", server.url, "--api-key", API_KEY, *extra]
    rc, out, err = run(*argv)
    assert rc == client.CLIENT_ERROR and out == ""
    assert needle in err


def test_argument_errors_exit_2_before_sending(images: Path) -> None:
    rc, _, err = run(str(images / "missing.jpg"), "--url", "http://127.0.0.1:9")
    assert rc == client.CLIENT_ERROR and "no such file or directory" in err
    rc, _, err = run(str(images / "*.png"), "--url", "http://127.0.0.1:9")
    assert rc == client.CLIENT_ERROR and "no files match" in err
    rc, _, err = run(str(images / "chelsea.jpg"), "--top-k", "0")
    assert rc == client.CLIENT_ERROR and "--top-k must be at least 1" in err


def test_connection_refused_exits_4(images: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rc, out, err = run(str(images / "chelsea.jpg"), "--url", url, "--json")
    assert rc == client.CONNECTION_ERROR
    assert json.loads(out)[0]["error"]["code"] == "connection_error"
    assert f"could not connect to {url}" in err


@pytest.fixture
def failing_server() -> Iterator[str]:
    """A loopback server that answers every request with the service's 500 error shape."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"error": {"code": "internal_error", "message": "runtime failed: boom",
                                         "help": "docs/reference/errors.md#internal_error"}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_5xx_exits_3(failing_server: str, images: Path) -> None:
    rc, _, err = run(str(images / "chelsea.jpg"), "--url", failing_server)
    assert rc == client.SERVER_ERROR
    assert "HTTP 500 internal_error: runtime failed: boom (see docs/reference/errors.md#internal_error)" in err


def test_module_entry_point(server: Server, images: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", str(images / "astronaut.jpg"), "--url", server.url, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={"IMGSERVE_API_KEY": API_KEY, "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["model"] == "resnet18"
