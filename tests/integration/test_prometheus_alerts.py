"""A real Prometheus (Debian's package) scrapes a live gateway with the scrape token and
evaluates deploy/monitoring/alerts.yml as shipped: an endpoint that starts crash-looping
raises BisEndpointCrashLooping within 2 minutes, and the alert ends after the fix."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from basic_inference_server.procutil import free_port
from tests.conftest import ROOT, assert_ok, wait_until
from tests.services import Service

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
