"""deploy/kubernetes: the overlays render, every object validates offline, and what the
objects name (commands, flags, settings, routes, streams, secrets) exists in the code.

Kubernetes objects are checked by ``kubernetes-validate`` against the API schemas of the
oldest and newest Kubernetes versions it ships (strict: unknown fields fail); KEDA's
objects against KEDA's CRD schemas kept under tests/fixtures/keda (also strict, as
``kubectl apply --validate=strict`` would be).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from basic_inference_server.cli import build_parser as gateway_parser
from basic_inference_server.config import GatewayConfig, parse_config
from basic_inference_server.gateway.api_table import PATHS as API
from basic_inference_server.queues.redis import GROUP
from basic_inference_server.server.standalone import build_parser as server_parser
from tests.conftest import FIXTURES, ROOT
from tests.scaleout.kustomize_lite import build, real_kustomize, render

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["cpu", "gpu"]
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
SECRET_KEYS = {"admin_token", "metrics_token", "redis_password"}
# Keys of bis-secrets only the gateway's pods mount.
GATEWAY_SECRETS = {"admin_token", "metrics_token"}
PRESTOP_PAUSE = 5


def _crd_schema(name: str) -> dict[str, Any]:
    crd = next(d for d in yaml.safe_load_all((FIXTURES / "keda" / name).read_text()) if d)
    return strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): _crd_schema("keda.sh_scaledobjects.yaml"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"):
        _crd_schema("keda.sh_triggerauthentications.secretTargetRef.yaml"),
}


# The prometheus-operator's kinds: no schema here (kubernetes-validate knows core kinds).
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def load_render() -> Any:
    path = DEPLOY / "base" / "render_config.py"
    spec = importlib.util.spec_from_file_location("render_config", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pod_config(objects: list[dict[str, Any]], container: dict[str, Any],
               tmp_path: Path) -> tuple[GatewayConfig, list[str]]:
    """The configuration a container renders at start (dummy secrets), and its command."""
    command = container["command"]
    cut = command.index("--")
    assert command[:2] == ["python", "/etc/bis/render_config.py"]
    template, out = command[2:cut]
    data = one(objects, "ConfigMap", "bis-config")["data"]
    assert "render_config.py" in data
    secrets = tmp_path / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for key in SECRET_KEYS:
        (secrets / key).write_text(f"dummy-{key}")
    (tmp_path / "template.json").write_text(data[Path(template).name])
    load_render().render(tmp_path / "template.json", tmp_path / "config.json", secrets)
    return parse_config(yaml.safe_load((tmp_path / "config.json").read_text())), command[cut + 1:]


def test_the_overlays_render(overlay):
    name, objects = overlay
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("Deployment") == 3 and kinds.count("ScaledObject") == 2
    assert {"Namespace", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor",
            "PrometheusRule", "TriggerAuthentication", "ConfigMap", "Service"} <= set(kinds)
    assert all(o["metadata"].get("namespace") == "bis" for o in objects if o["kind"] != "Namespace")


@pytest.mark.skipif(real_kustomize() is None, reason="no kustomize or kubectl to compare with")
@pytest.mark.parametrize("name", OVERLAYS)
def test_the_fallback_renderer_matches_kustomize(name):
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    real = {key(o): o for o in render(DEPLOY / "overlays" / name)}
    assert {key(o): o for o in build(DEPLOY / "overlays" / name)} == real


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_strictly(overlay, version):
    for obj in overlay[1]:
        if (obj["apiVersion"], obj["kind"]) in KEDA_SCHEMAS or obj["kind"] in MONITORING_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_keda_objects_validate_against_the_crds(overlay):
    keda = [o for o in overlay[1] if (o["apiVersion"], o["kind"]) in KEDA_SCHEMAS]
    assert len(keda) == 3
    for obj in keda:
        jsonschema.validate(obj, KEDA_SCHEMAS[obj["apiVersion"], obj["kind"]])


def test_the_keda_check_catches_mistakes(overlay):
    scaled = copy.deepcopy(find(overlay[1], "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate(scaled, KEDA_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"])
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 10
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"])


def test_gateway_probes_termination_and_budget(overlay, tmp_path):
    objects = overlay[1]
    deployment = one(objects, "Deployment", "bis-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config, command = pod_config(objects, container, tmp_path)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live" in API
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in API
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_PAUSE)]
    assert pod["terminationGracePeriodSeconds"] > config["STOP_TIMEOUT"] + PRESTOP_PAUSE
    assert config["READY_POLICY"] == "any"  # one crash-looping endpoint keeps the pod in service
    assert config.admin_token() == "dummy-admin_token"
    assert command[:2] == ["python", "run_gateway.py"] and (ROOT / command[1]).is_file()
    args = gateway_parser().parse_args(command[2:])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert args.port == port and args.config == "/tmp/bis/config_gateway.json"
    pdb = one(objects, "PodDisruptionBudget", "bis-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_one_worker_deployment_and_scaled_object_per_endpoint(overlay, tmp_path):
    name, objects = overlay
    gateway_pod = one(objects, "Deployment", "bis-gateway")["spec"]["template"]["spec"]
    gateway, _ = pod_config(objects, gateway_pod["containers"][0], tmp_path / "gw")
    workers = [d for d in find(objects, "Deployment") if d["metadata"]["name"] != "bis-gateway"]
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in find(objects, "ScaledObject")}
    assert set(scaled) == {w["metadata"]["name"] for w in workers}
    redis_service = one(objects, "Service", "redis")
    for worker in workers:
        pod = worker["spec"]["template"]["spec"]
        container = pod["containers"][0]
        config, command = pod_config(objects, container, tmp_path / worker["metadata"]["name"])
        assert command[:3] == ["python", "-m", "basic_inference_server.server"]
        args = server_parser().parse_args(command[3:])
        endpoint = args.endpoint
        assert (ROOT / args.endpoints / f"{endpoint}.py").is_file()
        assert endpoint in config.endpoints and gateway.endpoints[endpoint].settings["DISABLED"]
        assert worker["metadata"]["labels"]["bis/endpoint"] == endpoint
        assert pod["terminationGracePeriodSeconds"] > config["STOP_TIMEOUT"]
        # Its /run port stays on loopback; the probes run inside the pod.
        assert args.host == "127.0.0.1" and "ports" not in container
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert f"http://127.0.0.1:{args.port}/health'" in container[probe]["exec"]["command"][2]
        # Worker and gateway share one queue, the one the Redis Service serves.
        queue = urlsplit(config["QUEUE"])
        assert config["QUEUE"] == gateway["QUEUE"] and queue.hostname == "redis"
        assert queue.port == redis_service["spec"]["ports"][0]["port"]
        # KEDA watches that endpoint's stream and consumer group (queues/redis.py).
        trigger = scaled[worker["metadata"]["name"]]["spec"]["triggers"][0]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams" and "lagCount" in meta
        assert meta["stream"] == f"bis:jobs:{endpoint}" and meta["consumerGroup"] == GROUP
        assert meta["address"] == f"redis.bis.svc.cluster.local:{queue.port}"
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert {r["key"] for r in auth["spec"]["secretTargetRef"]} == {"redis_password"}
        floor = scaled[worker["metadata"]["name"]]["spec"]["minReplicaCount"]
        # Down to zero only where nothing but jobs reaches the endpoint and no model must stay warm.
        assert floor == (0 if endpoint == "cpu_bound" else 1)
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        wanted = config.endpoints[endpoint].settings["GPUS"]
        assert gpus == (len(wanted) if wanted else 0)
    torch = next(w for w in workers if w["metadata"]["labels"]["bis/endpoint"] == "torch_mlp")
    limits = torch["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (name == "gpu")


def test_secrets_are_files_and_the_admin_token_stays_on_the_gateway(overlay):
    for obj in find(overlay[1], "Deployment") + find(overlay[1], "StatefulSet"):
        pod = obj["spec"]["template"]["spec"]
        keys = {item["key"] for v in pod["volumes"] if "secret" in v
                for item in v["secret"]["items"]}
        assert all(v["secret"]["secretName"] == "bis-secrets" for v in pod["volumes"] if "secret" in v)
        assert keys <= SECRET_KEYS
        on_gateway = obj["metadata"]["name"] == "bis-gateway"
        assert (keys >= GATEWAY_SECRETS) if on_gateway else not keys & GATEWAY_SECRETS
        for container in pod["containers"]:
            assert "valueFrom" not in str(container.get("env", []))  # no secret in the environment
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_service_monitor_scrapes_the_gateway_metrics_with_the_scrape_token(overlay, tmp_path):
    objects = overlay[1]
    monitor = one(objects, "ServiceMonitor", "bis-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(objects, "Service", "bis-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" in API
    # /metrics takes a bearer token: the scrape token, never the admin token. Prometheus reads
    # it from the Secret in the monitor's namespace; the gateway pods mount the same key and
    # configure it as METRICS_TOKEN.
    auth = endpoint["authorization"]
    assert auth["type"] == "Bearer" and set(auth) == {"type", "credentials"}
    secret = auth["credentials"]
    assert secret == {"name": "bis-secrets", "key": "metrics_token"}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    pod = one(objects, "Deployment", "bis-gateway")["spec"]["template"]["spec"]
    mounted = {item["key"] for v in pod["volumes"] if v.get("secret", {}).get("secretName")
               == secret["name"] for item in v["secret"]["items"]}
    assert secret["key"] in mounted
    config, _ = pod_config(objects, pod["containers"][0], tmp_path)
    assert config["METRICS_TOKEN"] == f"dummy-{secret['key']}" != config.admin_token()


def test_the_alert_rules_and_the_dashboard_are_deployed(overlay):
    objects = overlay[1]
    rule = one(objects, "PrometheusRule", "bis-alerts")
    alerts = yaml.safe_load((DEPLOY.parent / "monitoring" / "alerts.yml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == alerts["groups"], "the rules of alerts.yml, as they are"
    board = one(objects, "ConfigMap", "bis-grafana-dashboard")
    # Grafana's dashboard sidecar loads ConfigMaps by this label.
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (DEPLOY.parent / "monitoring" / "grafana-dashboard.json").read_text()
    assert board["data"] == {"grafana-dashboard.json": shipped}


def test_the_token_scaling_example_validates_against_the_crd():
    example = ROOT / "deploy" / "kubernetes" / "examples" / "keda-tokens.yaml"
    objects = [o for o in yaml.safe_load_all(example.read_text()) if o]
    assert [o["kind"] for o in objects] == ["ScaledObject"]
    jsonschema.validate(objects[0], KEDA_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"])
    trigger = objects[0]["spec"]["triggers"][0]
    assert "bis_tenant_tokens_total" in trigger["metadata"]["query"]
