"""docker-compose.yml: it parses, and every command, flag, file and setting it names exists.

No Docker engine runs here; the same topology (Redis, a gateway, two standalone
workers) runs for real, as processes on separate network namespaces, in
tests/multihost/test_netns.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from basic_inference_server.cli import build_parser as gateway_parser
from basic_inference_server.config import load_config
from basic_inference_server.gateway.api_table import PATHS as API
from basic_inference_server.server.standalone import build_parser as server_parser
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
BIS = {name: s for name, s in SERVICES.items() if s.get("image") == "basic-inference-server:local"}
RENDER = ROOT / "deploy" / "kubernetes" / "base" / "render_config.py"


def load_render() -> Any:
    spec = importlib.util.spec_from_file_location("render_config", RENDER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a container path maps to through the service's bind mounts."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the repository")


def split_command(service: dict[str, Any]) -> tuple[list[str], list[str]]:
    command = service["command"]
    assert command[:2] == ["python", "/opt/bis/render_config.py"], command
    cut = command.index("--")
    return command[2:cut], command[cut + 1:]


def test_services_and_secrets():
    assert set(SERVICES) == {"redis", "gateway", "worker1", "worker2", "prometheus", "grafana"}
    assert set(BIS) == {"gateway", "worker1", "worker2"}
    for service in SERVICES.values():
        for name in service.get("secrets", []):
            source = ROOT / COMPOSE["secrets"][name]["file"]
            assert source.parent.is_dir() and (source.parent / ".gitignore").is_file()
    assert BIS["gateway"]["build"]["context"] == "."
    assert "EXTRAS" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("name", sorted(BIS))
def test_commands_flags_and_settings_exist(name, tmp_path):
    service = BIS[name]
    assert host_path(service, "/opt/bis/render_config.py") == RENDER
    (template, out), command = split_command(service)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for secret in service["secrets"]:
        (secrets / secret).write_text("s3cr3t-" + secret)
    rendered = tmp_path / "config.json"
    load_render().render(host_path(service, template), rendered, secrets)
    config = load_config(rendered)  # every key is a known setting, every value valid
    assert config["QUEUE"].startswith("redis://:s3cr3t-redis_password@redis:6379/")
    if name == "gateway":
        assert command[:2] == ["python", "run_gateway.py"] and (ROOT / command[1]).is_file()
        args = gateway_parser().parse_args(command[2:])
        assert config.admin_token() == "s3cr3t-admin_token"
        assert service["ports"] == [f"{args.port}:{args.port}"]
        jobs_only = [n for n, e in config.endpoints.items() if e.settings["DISABLED"]]
        assert jobs_only == ["cpu_bound"]
    else:
        assert command[:3] == ["python", "-m", "basic_inference_server.server"]
        args = server_parser().parse_args(command[3:])
        assert args.endpoint in config.endpoints
        assert args.host == "127.0.0.1" and "ports" not in service  # pulls jobs, serves no one
        assert "admin_token" not in service["secrets"]  # endpoint code never sees it
    assert args.config == out
    assert (ROOT / args.endpoints / f"{next(iter(config.endpoints))}.py").is_file()


def test_healthchecks_probe_routes_that_exist():
    gateway_probe = " ".join(BIS["gateway"]["healthcheck"]["test"])
    assert "/health/ready" in gateway_probe and "/health/ready" in API
    worker_probe = " ".join(BIS["worker1"]["healthcheck"]["test"])
    assert "5003/health'" in worker_probe
    assert BIS["worker2"]["command"] == BIS["worker1"]["command"]


def test_render_config_writes_a_private_file_and_runs_the_command(tmp_path):
    (tmp_path / "token").write_text("abc-DEF_123\n")
    template = tmp_path / "t.json"
    template.write_text('{"ADMIN_TOKEN": "${secret:token}"}')
    out = tmp_path / "run" / "config.json"
    probe = "import os,sys; print(oct(os.stat(sys.argv[1]).st_mode & 0o777), open(sys.argv[1]).read())"
    proc = subprocess.run([sys.executable, str(RENDER), str(template), str(out), "--",
                           sys.executable, "-c", probe, str(out)],
                          env={"BIS_SECRETS_DIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(None, 1) == ["0o600", '{"ADMIN_TOKEN": "abc-DEF_123"}\n']
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("value", ["", "has space", 'quote"d', "a/b@c"])
def test_render_config_refuses_secrets_that_are_not_url_safe(tmp_path, value):
    (tmp_path / "pw").write_text(value)
    template = tmp_path / "t.json"
    template.write_text('{"QUEUE": "redis://:${secret:pw}@redis:6379/0"}')
    proc = subprocess.run([sys.executable, str(RENDER), str(template), str(tmp_path / "o.json"),
                           "--", "true"], env={"BIS_SECRETS_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "not URL-safe" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_the_monitoring_profile_scrapes_with_the_scrape_token_and_loads_rules_and_dashboard(
        tmp_path):
    monitoring = {name: s for name, s in SERVICES.items() if "monitoring" in s.get("profiles", [])}
    assert set(monitoring) == {"prometheus", "grafana"}, "not started without the profile"
    prometheus, grafana = monitoring["prometheus"], monitoring["grafana"]
    config_path = host_path(prometheus, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["gateway:5002"]}]
    assert job["metrics_path"] == "/metrics" in API
    # The scrape token, as a file: the compose secret the gateway takes as METRICS_TOKEN.
    auth = job["authorization"]
    assert auth["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in prometheus["secrets"] and "metrics_token" in BIS["gateway"]["secrets"]
    template, _ = split_command(BIS["gateway"])
    settings = json.loads(host_path(BIS["gateway"], template[0]).read_text())
    assert settings["METRICS_TOKEN"] == "${secret:metrics_token}"
    # The rule files sit beside the configuration in the container, as in the repository.
    for rules in config["rule_files"]:
        assert host_path(prometheus, f"/etc/prometheus/{rules}") == config_path.parent / rules
    # promtool checks the configuration and its rules (the token file made here).
    (tmp_path / "metrics_token").write_text("dummy")
    auth["credentials_file"] = str(tmp_path / "metrics_token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(config_path.parent / "alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "config",
                              str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Grafana: the provisioned datasource is this Prometheus, the dashboard file the shipped one.
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "basic-inference-server.yml")
                                .read_text())["providers"]
    folder = provider["options"]["path"]
    assert host_path(grafana, f"{folder}/basic-inference-server.json") == \
        ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
