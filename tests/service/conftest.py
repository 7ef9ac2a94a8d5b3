"""A real model repository (exported with the project's exporter) and real uvicorn servers on loopback."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, **kw: object) -> httpx.Client:
        headers = {"X-API-Key": API_KEY}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(repo: Path, tmp: Path, *args: str, wait_ready: bool = True, wait_http: bool = True,
                 nofile: int | None = None) -> Server:
    """A ``python -m service`` subprocess on a free port; waits for readiness (or liveness, or, with
    ``wait_http=False``, nothing: a test of start-up itself). ``nofile``: its open-file limit (soft and hard)."""

    def limit_fds() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model-repo", str(repo), "--port", str(port), "--workers", "2",
         *([] if "--grpc-port" in args else ["--grpc-port", "0"]), *args],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, preexec_fn=limit_fds,
    )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    if not wait_http:
        return server
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        try:
            r = httpx.get(f"{server.url}/health/{'ready' if wait_ready else 'live'}", timeout=2)
            if r.status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{server.logs()}")


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The main server: API key on, result cache on, 1 MB body limit, 4 images a request."""
    s = start_server(
        model_repo, tmp_path_factory.mktemp("srv"), "--api-key", API_KEY, "--cache-size", "64",
        "--max-upload-bytes", str(1024 * 1024), "--max-images-per-request", "4", "--max-queue-delay-ms", "20",
        "--max-image-pixels", "4000000",
    )
    yield s
    s.stop()
