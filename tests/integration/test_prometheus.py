"""A real Prometheus (Debian's package) scrapes a live gateway with the scrape token and
evaluates deploy/monitoring/alerts.yml as shipped: an endpoint that starts crash-looping
raises BisEndpointCrashLooping within 2 minutes, and the alert ends after the fix. With
API keys on, a job waiting, models loaded and recorded NVML data (NVML_RECORDING), every
panel of deploy/monitoring/grafana-dashboard.json gets data from that Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from basic_inference_server.procutil import free_port
from tests.conftest import (
    FIXTURE_ENDPOINTS,
    ROOT,
    assert_ok,
    spawn_gateway,
    wait_until,
    with_test_defaults,
)
from tests.services import Service
from tests.tenants.conftest import POOL, call, make_key, ready

pytestmark = pytest.mark.slow
MONITORING = ROOT / "deploy" / "monitoring"
TOKEN = "scrape-token-for-the-test"


def start_prometheus(folder: Path, gateway_port: int) -> tuple[Service, str]:
    """Prometheus with the shipped configuration and rules, scraping and evaluating every
    second, pointed at the gateway with the scrape token in a file."""
    folder.mkdir()
    (folder / "metrics_token").write_text(TOKEN)
    os.chmod(folder / "metrics_token", 0o600)
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway_port}"]}]
    job["authorization"]["credentials_file"] = str(folder / "metrics_token")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(MONITORING / "alerts.yml", folder / "alerts.yml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = Service("prometheus", folder)
    service.spawn(["prometheus", f"--config.file={folder / 'prometheus.yml'}",
                   f"--storage.tsdb.path={folder / 'data'}",
                   f"--web.listen-address=127.0.0.1:{port}"])
    service.wait_ready(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, timeout=60)
    return service, url


def crash_loop_alerts(url: str) -> list[dict[str, Any]]:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "BisEndpointCrashLooping"
            and a["labels"].get("endpoint") == "looping"]


def test_a_crash_loop_fires_within_two_minutes_and_ends_after_the_fix(gateways, tmp_path):
    flag = tmp_path / "crash"
    gw = gateways({"METRICS_TOKEN": TOKEN, "CONFIG_ENDPOINTS": {
        "looping": {"SERVER_CLASS": "crash_loop", "CRASH_FLAG": str(flag)}}})
    prometheus, url = start_prometheus(tmp_path / "prometheus", gw.port)
    try:
        wait_until(lambda: any(t["health"] == "up" for t in requests.get(
            f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]),
            timeout=60, message="Prometheus scrapes the gateway with the scrape token")
        assert not crash_loop_alerts(url)
        # The server dies, and every new one kills itself as it loads.
        flag.touch()
        started = time.monotonic()
        os.kill(gw.server("looping")["pid"], signal.SIGKILL)
        wait_until(lambda: any(a["state"] == "firing" for a in crash_loop_alerts(url)),
                   timeout=120, interval=1, message="BisEndpointCrashLooping fires")
        assert gw.server("looping")["state"] in ("CRASHLOOP", "STARTING")
        assert time.monotonic() - started < 120
        # The fix, then the start the alert asks for.
        flag.unlink()
        assert gw.post("/start_server", {"SIGNATURE": "looping"}).status_code == 200
        wait_until(lambda: gw.server("looping")["state"] == "READY", timeout=60,
                   message="the fixed endpoint is READY")
        assert_ok(gw.run("looping", A=1))
        # The rule looks back 2 minutes: the alert ends once that window is clear.
        wait_until(lambda: not crash_loop_alerts(url), timeout=200, interval=2,
                   message="BisEndpointCrashLooping ends after the fix")
    finally:
        prometheus.stop()


def panels_without_data(url: str) -> list[str]:
    """The dashboard's graphs none of whose queries returns a series, by title."""
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    empty = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        found = False
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
            assert answer.ok, f"{panel['title']}: {expr}: {answer.text}"
            found = found or bool(answer.json()["data"]["result"])
        if not found:
            empty.append(panel["title"])
    return empty


def test_every_dashboard_panel_gets_data(tmp_path):
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "tests" / "tenants" / "endpoints" / "metered.py", endpoints)
    config = with_test_defaults({
        "API_KEYS": True, "METRICS_TOKEN": TOKEN, "HEALTH_SAMPLE_INTERVAL": 1,
        "NVML_RECORDING": str(ROOT / "tests" / "fixtures" / "nvml" / "two_gpus.json"),
        # The recording reaches the workers too: the pool's memory guard reads GPU 0 of
        # it (half full), where GPU 1 (93 %) would refuse every load.
        "CONFIG_ENDPOINTS": {"echo": {}, "pool": {**POOL, "GPUS": [0]},
                             "metered": {"SERVER_CLASS": "metered"},
                             "slow": {"SERVER_CLASS": "slow", "NR_WORKERS": 1}}})
    gw = spawn_gateway(tmp_path / "gw", config, endpoints=endpoints)
    prometheus = None
    stop = threading.Event()
    try:
        ready(gw)
        key = make_key(gw, TENANT="acme", QUOTA={"UNITS": 10000, "PER": "day"})["KEY"]
        prometheus, url = start_prometheus(tmp_path / "prometheus", gw.port)
        # A job that stays unfinished: the queue's depth and oldest age have a value.
        job = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow", "SECONDS": 600},
                            headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert job.status_code == 202, job.text
        assert call(gw, key, "nope").status_code == 404  # an error for the errors panel

        def traffic() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    for signature, fields in (("echo", {}), ("pool", {}), ("metered", {"n": 1})):
                        call(gw, key, signature, session=session, **fields)
                    stop.wait(0.05)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        wait_until(lambda: not panels_without_data(url), timeout=120, interval=2,
                   message="every dashboard panel has data")
    finally:
        stop.set()
        if prometheus is not None:
            prometheus.stop()
        gw.stop()
