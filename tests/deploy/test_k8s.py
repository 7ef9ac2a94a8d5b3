"""The Kubernetes (kustomize) and KServe manifests: rendered, schema-validated offline, and checked
against the service itself (probe paths are routes the app serves, ports are the ports it listens on,
the drain fits the grace period)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, render, validate_k8s

OVERLAYS = ("cpu", "gpu")


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container_env(container: dict[str, Any], configmaps: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    names = {c["metadata"]["name"]: c.get("data", {}) for c in configmaps}
    for src in container.get("envFrom", []):
        env.update(names[src["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def check_probes(container: dict[str, Any], served: Callable[[str, str], bool], port: int,
                 also: set[int] | None = None) -> None:
    """Every HTTP probe hits a GET route of the app, on the port the container listens on (the ports
    declared: that one and ``also``, e.g. gRPC's)."""
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    declared = {p["containerPort"] for p in container.get("ports", [])}
    want = {port} | (also or set())
    assert declared == want, f"{container['name']} declares ports {declared}, the service listens on {want}"
    probes = [k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
    assert {"readinessProbe", "livenessProbe"} <= set(probes), f"{container['name']} lacks probes"
    for kind in probes:
        get = container[kind]["httpGet"]
        assert served("GET", get["path"]), f"{kind} path {get['path']} is not a route of the app"
        p = named.get(get["port"], get["port"])
        assert p == port, f"{kind} port {get['port']} is not the service's port {port}"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(DEPLOY / "k8s" / "overlays" / request.param)


def test_every_object_is_valid(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    for obj in objs:
        validate_k8s(obj)


def test_deployment_serves_the_app(overlay: tuple[str, list[dict[str, Any]]],
                                   app_serves: Callable[[str, str], bool], app_port: int) -> None:
    name, objs = overlay
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    env = container_env(api, by_kind(objs, "ConfigMap"))
    port = int(env.get("IMGSERVE_PORT", app_port))
    grpc_port = int(env["IMGSERVE_GRPC_PORT"])
    check_probes(api, app_serves, port, {grpc_port})
    assert env["IMGSERVE_HOST"] == "0.0.0.0", "the service must listen beyond the pod's loopback"
    assert env.get("IMGSERVE_LOG_FORMAT") == "json"
    # the startup probe covers warm-up: readiness, with minutes of budget
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == api["readinessProbe"]["httpGet"]["path"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert api["image"] == f"imgserve:{name}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the Service forwards to the container's port, selecting the Deployment's pods
    svc = one(objs, "Service")
    by_name = {p["name"]: p["containerPort"] for p in api["ports"]}
    forwarded = {sp["name"]: by_name.get(sp["targetPort"], sp["targetPort"]) for sp in svc["spec"]["ports"]}
    assert forwarded == {"http": port, "grpc": grpc_port}
    (grpc_sp,) = [sp for sp in svc["spec"]["ports"] if sp["name"] == "grpc"]
    assert grpc_sp["appProtocol"] == "kubernetes.io/h2c"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert app_serves("GET", ann["prometheus.io/path"]) and int(ann["prometheus.io/port"]) == port


def test_drain_fits_the_grace_period(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    env = container_env(api, by_kind(objs, "ConfigMap"))
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + float(env["IMGSERVE_SHUTDOWN_DELAY_S"]) + float(env["IMGSERVE_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= drain, (pod["terminationGracePeriodSeconds"], drain)


def test_models_come_from_a_pvc_filled_by_the_export_image(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (api,) = pod["containers"]
    assert init["image"] == "imgserve:export"
    assert init["command"] == ["imgserve-export-if-missing"]
    claim = one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    vols = {v["name"]: v for v in pod["volumes"]}
    env = container_env(api, by_kind(objs, "ConfigMap"))
    for c in (init, api):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vol = vols[mounts[env["IMGSERVE_MODEL_REPO"]]]
        assert vol["persistentVolumeClaim"]["claimName"] == claim
    (api_models,) = [m for m in api["volumeMounts"] if m["mountPath"] == env["IMGSERVE_MODEL_REPO"]]
    # CPU pods only read models; GPU pods write the TensorRT engine cache into version folders
    assert api_models.get("readOnly", False) is (env.get("IMGSERVE_DEVICE") != "cuda")
    assert not [m for m in init["volumeMounts"] if m.get("readOnly")]


def test_gpu_overlay_requests_a_gpu(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = overlay
    (api,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    gpus = api["resources"].get("limits", {}).get("nvidia.com/gpu")
    env = container_env(api, by_kind(objs, "ConfigMap"))
    if name == "gpu":
        assert gpus == 1 and env["IMGSERVE_DEVICE"] == "cuda"
    else:
        assert gpus is None and "IMGSERVE_DEVICE" not in env


def test_hpa_scales_on_a_serving_metric_with_cpu_fallback(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    hpa = one(objs, "HorizontalPodAutoscaler")
    dep = one(objs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "inference_inflight_requests"
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    # the adapter serves the metric the HPA names, from a series the service exports
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert "inference_inflight_requests" in served
    from service.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    for rule in adapter["rules"]["custom"]:
        assert rule["seriesQuery"].split("{")[0].strip("'") in exported


def test_cpu_only_hpa_component(tmp_path: Path) -> None:
    # kustomize wants paths relative to the kustomization
    rel = os.path.relpath(DEPLOY / "k8s", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{rel}/overlays/cpu"], "components": [f"{rel}/components/hpa-cpu-only"],
    }))
    hpa = one(render(tmp_path), "HorizontalPodAutoscaler")
    validate_k8s(hpa)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


# KServe: its CRDs are not in the Kubernetes schemas, so the pod-level parts (containers) are validated
# as a Pod, and the CRD-level fields are checked against what KServe documents.

def kserve() -> dict[str, dict[str, Any]]:
    """The example objects by kind (the HTTP ServingRuntime under its kind, the gRPC one under its name)."""
    objs = [yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "kserve").glob("*.yaml"))]
    return {o["metadata"]["name"] if o["metadata"]["name"].endswith("-grpc") else o["kind"]: o for o in objs}


def _arg(c: dict[str, Any], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in c["args"] if a.startswith(f"{flag}="))


def test_grpc_serving_runtime_declares_its_h2c_port() -> None:
    """Knative routes one port per container: the gRPC runtime's is h2c, the one --grpc-port serves,
    and its probes are grpc.health.v1 on it."""
    rt = kserve()["imgserve-grpc"]
    (c,) = rt["spec"]["containers"]
    port = int(_arg(c, "--grpc-port"))
    assert c["ports"] == [{"name": "h2c", "containerPort": port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": port}
    assert rt["spec"]["protocolVersions"] == ["v2"]
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "grpc-runtime"},
                  "spec": {"containers": rt["spec"]["containers"]}})


def test_serving_runtime(app_serves: Callable[[str, str], bool]) -> None:
    rt = kserve()["ServingRuntime"]
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = rt["spec"]
    assert spec["protocolVersions"] == ["v2"]
    # the v2 (Open Inference Protocol) routes KServe calls are served by the app
    for method, path in (("GET", "/v2/health/ready"), ("GET", "/v2/models/m/ready"), ("GET", "/v2/models/m"),
                         ("POST", "/v2/models/m/infer")):
        assert app_serves(method, path), f"{method} {path}"
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert "--model-repo=/mnt/models" in c["args"] and "--host=0.0.0.0" in c["args"]
    port = int(next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--port=")))
    check_probes(c, app_serves, port)
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == port
    assert app_serves("GET", spec["annotations"]["prometheus.kserve.io/path"])
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "servingruntime"},
                  "spec": {"containers": spec["containers"]}})


def test_inference_service() -> None:
    objs = kserve()
    isvc, rt = objs["InferenceService"], objs["ServingRuntime"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["protocolVersion"] in rt["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert pred["minReplicas"] == 0, "the example shows scale-to-zero"
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
                  "spec": {"containers": [{"name": "kserve-container", "image": "x",
                                           "resources": model["resources"]}]}})
