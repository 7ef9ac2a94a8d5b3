"""`make deploy-test` as a test: builds the images and runs the compose stack (minutes). Needs a Docker
daemon that answers (the script itself can install and start one as root: run `make deploy-test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.deploy.conftest import ROOT


def docker_usable() -> str | None:
    docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    if docker is None:
        return "docker is not installed (make deploy-test installs Debian's docker.io)"
    r = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return "no Docker daemon answers (make deploy-test starts one as root)"
    if os.geteuid() != 0:
        return "the deploy test chowns the model repository for the containers' user: run it as root"
    return None


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_deploy_stack() -> None:
    reason = docker_usable()
    if reason:
        pytest.skip(reason)
    r = subprocess.run([sys.executable, str(ROOT / "deploy" / "scripts" / "deploy_test.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=1700)
    print(r.stdout[-20000:])
    assert r.returncode == 0, r.stdout[-6000:]
