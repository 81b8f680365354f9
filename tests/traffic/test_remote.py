"""Remote endpoints: a second gateway on another port serves an endpoint of the first.

Gateway B serves ``echo`` with API keys on; gateway A's endpoint ``rem`` has
``URLS: [B]``, ``REMOTE_SIGNATURE: echo`` and B's key in a file (``REMOTE_API_KEY``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import requests

from tests.conftest import (
    FIXTURE_ENDPOINTS,
    Gateway,
    GatewayPool,
    assert_error,
    assert_ok,
    free_port,
    gateway_env,
    spawn_gateway,
    wait_until,
    with_test_defaults,
    write_endpoint,
)
from tests.integration.test_front_tls import self_signed
from tests.tenants.conftest import make_key
from tests.timing import assert_not_slowed, timed

B_CONFIG = {"API_KEYS": True, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}}


def remote_b(gateways: GatewayPool, port: int, key_file: Path | None = None) -> Gateway:
    """Gateway B on ``port``; with ``key_file``, a key of B's written there (0600)."""
    gw = gateways(B_CONFIG, port=port)
    gw.wait_state("echo", "READY", timeout=60)
    if key_file is not None:
        key_file.write_text(make_key(gw, TENANT="gateway-a")["KEY"] + "\n")
        os.chmod(key_file, 0o600)
    return gw


def restart(gateways: GatewayPool, b: Gateway) -> Gateway:
    """B again: the same folder (its key store) and port."""
    again = spawn_gateway(b.workdir, with_test_defaults(B_CONFIG), port=b.port)
    gateways.started.append(again)
    again.wait_state("echo", "READY", timeout=60)
    return again


def gateway_a(gateways: GatewayPool, urls: list[str], key_file: Path, **rem: Any) -> Gateway:
    section = {"URLS": urls, "REMOTE_SIGNATURE": "echo", "REMOTE_API_KEY": f"file:{key_file}",
               "TIMEOUT": 10, **rem}
    gw = gateways({"CONFIG_ENDPOINTS": {"rem": section}})
    gw.wait_state("rem", "READY", timeout=30)
    return gw


def reachable(gw: Gateway, url: str) -> bool | None:
    return gw.server("rem")["remote"]["urls"][url]["reachable"]  # type: ignore[no-any-return]


# A local endpoint of gateway A that reports an environment variable of its worker.
ENV_PROBE = """
import os

from basic_inference_server import FlaskWorker


class EnvProbe(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs["NAME"]

    def _predict(self, name):
        return os.environ.get(name)

    def _post_process(self, value):
        return {"value": value}
"""


def test_requests_pass_through_with_the_remotes_key(gateways, tmp_path):
    """REMOTE_API_KEY from the environment: the front sends it, endpoint code never sees it."""
    b = remote_b(gateways, free_port())
    key = make_key(b, TENANT="gateway-a")["KEY"]
    url = f"http://127.0.0.1:{b.port}"
    endpoints = tmp_path / "a_endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    write_endpoint(endpoints, "env_probe", ENV_PROBE)
    a = gateways({"CONFIG_ENDPOINTS": {
        "rem": {"URLS": [url], "REMOTE_SIGNATURE": "echo", "REMOTE_API_KEY": "env:B_KEY",
                "PING_INTERVAL": 0.5},
        "env_probe": {"NR_WORKERS": 1}}},
        endpoints=endpoints, env=gateway_env(B_KEY=key))
    a.wait_state("rem", "READY", timeout=30)
    with requests.Session() as session:
        for i in range(5):
            # X-Customer-ID is not passed on: B takes the tenant from A's key (and would
            # refuse the header beside a key).
            resp = session.post(a.url("/run"), json={"SIGNATURE": "rem", "i": i},
                                headers={"X-Customer-ID": "someone"}, timeout=10)
            assert assert_ok(resp)["echo"] == {"i": i}
    info = a.server("rem")
    assert info["kind"] == "remote" and info["remote"]["signature"] == "echo"
    wait_until(lambda: reachable(a, url) is True, timeout=10, message="B probed reachable")
    metrics = a.get("/metrics").text
    assert 'bis_requests_total{endpoint="rem",status="200",version=""} 5.0' in metrics
    assert f'bis_remote_up{{endpoint="rem",url="{url}"}} 1.0' in metrics
    a.wait_state("env_probe", "READY", timeout=60)
    assert assert_ok(a.run("env_probe", NAME="B_KEY"))["value"] is None
    assert assert_ok(a.run("env_probe", NAME="PATH"))["value"]  # the rest is there
    # The key never shows: not in /list_servers, not in the logs.
    assert key not in str(a.servers()) and key not in a.log_text()


def test_a_wrong_key_is_the_remotes_401(gateways, tmp_path):
    b = remote_b(gateways, free_port())
    wrong = tmp_path / "wrong_key"
    wrong.write_text("bis_not_a_key_of_b\n")
    a = gateway_a(gateways, [f"http://127.0.0.1:{b.port}"], wrong)
    body = assert_error(a.run("rem", i=1), 401)
    assert body["ERROR_TYPE"] == "unauthorized"


def test_management_of_a_remote_endpoint(gateways):
    b = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    a = gateways({"CONFIG_ENDPOINTS": {"rem": {"URLS": [f"http://127.0.0.1:{b.port}"],
                                               "REMOTE_SIGNATURE": "echo"}}})
    a.wait_state("rem", "READY", timeout=30)
    # Nothing runs here: no workers to scale, no code to reload.
    for path, body in (("/update_workers", {"SIGNATURE": "rem", "NR_WORKERS": 2}),
                       ("/reload_server", {"SIGNATURE": "rem"})):
        assert "remote endpoint" in assert_error(a.post(path, body), 400)["ERROR"]
    assert_ok(a.post("/kill_server", {"SIGNATURE": "rem"}))
    a.wait_state("rem", "STOPPED")
    # Each front process reads the route table again within 50 ms.
    [refused] = wait_until(lambda: [r for r in [a.run("rem")] if r.status_code == 503],
                           timeout=5, message="503 when stopped")
    assert assert_error(refused, 503)["STATE"] == "STOPPED"
    assert_ok(a.post("/start_server", {"SIGNATURE": "rem"}))
    a.wait_state("rem", "READY")
    assert assert_ok(a.run("rem", i=1))["echo"] == {"i": 1}


def test_a_remote_nobody_answers_is_unreachable_then_ready_again(gateways, tmp_path):
    key_file = tmp_path / "b_key"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    b = remote_b(gateways, port, key_file)
    a = gateway_a(gateways, [url], key_file, PING_INTERVAL=0.3, PING_TIMEOUT=0.3, PING_MISSES=2)
    assert_ok(a.run("rem", i=1))
    b.stop()
    info = a.wait_state("rem", "UNREACHABLE", timeout=15)
    assert "no URL answers GET /health/live" in info["last_error"]

    def refused() -> tuple[list[float], list[float]] | None:
        """Five requests in a row answered 503 UNREACHABLE (every front process has read
        the route table again, within 50 ms): their durations, and those of five the
        front answers on its own (an unknown SIGNATURE's 404), made in turn with them."""
        took, local = [], []
        for _ in range(5):
            resp, seconds = timed(lambda: a.run("rem", i=2))
            took.append(seconds)
            local.append(timed(lambda: assert_error(a.run("no_such_endpoint"), 404))[1])
            body = assert_error(resp, 503)
            if body.get("STATE") != "UNREACHABLE":
                return None
            assert int(resp.headers["Retry-After"]) >= 1
        return took, local

    took, local = wait_until(refused, timeout=5, message="503 UNREACHABLE")
    # At once: no attempt to reach B, no backoff; as fast as an answer of the front's own.
    assert_not_slowed(took, local, "a 503 UNREACHABLE")
    restart(gateways, b)
    a.wait_state("rem", "READY", timeout=15)
    assert assert_ok(a.run("rem", i=3))["echo"] == {"i": 3}


def served_by(a: Gateway, urls: list[str], total: int) -> list[int]:
    """How many of A's requests each URL answered, from A's access log (``worker <url>``),
    once it holds ``total`` of them."""

    def counts() -> list[int] | None:
        text = a.log_text()
        found = [text.count(f" worker {url} ") for url in urls]
        return found if sum(found) >= total else None

    return wait_until(counts, timeout=10, message=f"{total} requests in A's access log")  # type: ignore[no-any-return]


def test_balanced_over_two_remotes_and_one_gone_is_skipped(gateways):
    plain = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}
    b1, b2 = gateways(plain), gateways(plain)
    urls = [f"http://127.0.0.1:{b.port}" for b in (b1, b2)]
    a = gateways({"CONFIG_ENDPOINTS": {"rem": {"URLS": urls, "REMOTE_SIGNATURE": "echo",
                                               "PING_INTERVAL": 60}}})
    a.wait_state("rem", "READY", timeout=30)
    for i in range(20):
        assert assert_ok(a.run("rem", i=i))["echo"] == {"i": i}
    first, second = served_by(a, urls, 20)
    assert first >= 5 and second >= 5 and first + second == 20, (first, second)
    # B1 gone: its URL refuses, and every request goes on to B2 before any probe says so.
    b1.stop()
    for i in range(10):
        assert_ok(a.run("rem", i=i))
    assert served_by(a, urls, 30) == [first, second + 10]


def test_https_remote_checked_against_a_private_ca(gateways, tmp_path):
    cert, key = self_signed(tmp_path)
    b = gateways({"TLS_CERT": cert, "TLS_KEY": key,
                  "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}, wait=None)
    url = f"https://127.0.0.1:{b.port}"
    wait_until(lambda: requests.get(url + "/health/ready", verify=cert, timeout=2).ok,
               timeout=30, message="B serves HTTPS")
    section = {"URLS": [url], "REMOTE_SIGNATURE": "echo", "PING_INTERVAL": 0.5}
    # B's certificate is trusted through SSL_CERT_FILE, by the front and the probes alike.
    a = gateways({"CONFIG_ENDPOINTS": {"rem": section}}, env=gateway_env(SSL_CERT_FILE=cert))
    a.wait_state("rem", "READY", timeout=30)
    assert assert_ok(a.run("rem", i=1))["echo"] == {"i": 1}
    wait_until(lambda: reachable(a, url) is True, timeout=10, message="B probed over HTTPS")
    # Without it, the certificate is refused: no request is sent in clear or unchecked.
    # Its probes may find B unreachable before /health/ready is first asked (that is never
    # 200 again), so the gateway is awaited up and either. Either way the answer names the
    # refusal (the forward's, or the probes').
    untrusting = gateways({"CONFIG_ENDPOINTS": {"rem": section}}, wait=None)
    untrusting.wait_state("rem", ("READY", "UNREACHABLE"), timeout=30)
    body = assert_error(untrusting.run("rem", i=2), 503)
    assert "CERTIFICATE_VERIFY_FAILED" in body["ERROR"]
    info = untrusting.wait_state("rem", "UNREACHABLE", timeout=15)
    assert "CERTIFICATE_VERIFY_FAILED" in info["last_error"]
