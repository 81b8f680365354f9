"""The everyday API: metadata, GET /run, files, base64, paths, health."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from basic_inference_server.version import __version__
from tests.conftest import assert_error, assert_ok, wait_until

CONFIG = {
    "SERVER_NAME": "test_box",
    "APP_VERSION": "4.5.6",
    "DEFAULT_SERVER": "echo",
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 2, "TAG": "from-gateway-config"},
        "download": {},
        "b64": {"BASE64_KEYS": ["DATA"], "BASE64_OUTPUTS": ["OUT"]},
        "b64_module_config": {},
    },
}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def test_response_metadata(gw):
    body = assert_ok(gw.run("echo", INPUT_VALUE="hi"))
    assert body["echo"] == {"INPUT_VALUE": "hi"}
    assert body["ver"] == __version__
    assert body["app_ver"] == "4.5.6"
    assert body["server"] == "test_box"
    assert body["host"]
    assert time.strptime(body["time"], "%Y-%m-%d %H:%M:%S")
    assert isinstance(body["call_id"], int) and body["call_id"] >= 1
    assert body["worker_id"].startswith("echo:")
    wait_until(lambda: body["worker_pid"] in gw.server("echo")["worker_pids"], timeout=10)
    # The endpoint's section overrides its _CONFIG.
    assert body["tag"] == "from-gateway-config"


def test_call_ids_count_per_worker(gw):
    seen = {}
    for _ in range(6):
        body = assert_ok(gw.run("echo"))
        seen.setdefault(body["worker_pid"], []).append(body["call_id"])
    for ids in seen.values():
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_errors_carry_gateway_metadata(gw):
    body = assert_error(gw.run("nope"), 404)
    assert body["server"] == "test_box" and body["app_ver"] == "4.5.6" and "time" in body


def test_get_run(gw):
    resp = gw.get("/run", params={"SIGNATURE": "echo", "INPUT_VALUE": "a b&c", "N": "3"})
    body = assert_ok(resp)
    assert body["echo"] == {"INPUT_VALUE": "a b&c", "N": "3"}
    assert_error(gw.get("/run", params={"INPUT_VALUE": "x"}), 400)
    assert_error(gw.get("/run", params={"SIGNATURE": "ghost"}), 404)


def test_file_download_passes_through(gw):
    size = 300_000
    resp = gw.run("download", SIZE=size)
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == "attachment; filename=x.bin"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    expected = bytes(i % 256 for i in range(size))
    assert len(resp.content) == size
    assert hashlib.sha256(resp.content).digest() == hashlib.sha256(expected).digest()


def test_empty_file_download(gw):
    resp = gw.run("download", SIZE=0)
    assert resp.status_code == 200 and resp.content == b""
    assert "x.bin" in resp.headers["Content-Disposition"]


def test_base64_round_trip(gw):
    data = bytes(range(256)) * 40
    body = assert_ok(gw.run("b64", DATA=base64.b64encode(data).decode()))
    assert base64.b64decode(body["OUT"]) == data[::-1]
    assert body["LENGTH"] == len(data)


def test_bad_base64_is_400(gw):
    body = assert_error(gw.run("b64", DATA="***not base64***"), 400)
    assert body["FIELD"] == "DATA"


def test_get_paths(gw):
    paths = assert_ok(gw.get("/get_paths"))["AVAIL_PATHS"]
    for path in ("/run", "/list_servers", "/system_status", "/notifications", "/get_paths",
                 "/support_update_status", "/health/live", "/health/ready", "/start_server",
                 "/kill_server", "/update_workers", "/reload_server", "/shutdown"):
        assert path in paths
    assert paths["/shutdown"]["admin"] is True and paths["/run"]["admin"] is False
    assert set(paths["/run"]["methods"]) == {"GET", "POST"}
    assert assert_ok(gw.post("/get_paths"))["AVAIL_PATHS"] == paths


def test_health_live_and_ready(gw):
    assert assert_ok(gw.get("/health/live"))["status"] == "alive"
    body = assert_ok(gw.get("/health/ready"))
    assert body["status"] == "ready"
    assert body["endpoints"] == {"echo": "READY", "download": "READY", "b64": "READY",
                                 "b64_module_config": "READY"}


def test_list_servers_shows_a_server_port_only_with_tcp_port(gw):
    # The front reaches servers over Unix sockets; a TCP port is opened only when
    # TCP_PORT asks for it (tests/security/test_m5_server_tcp_port.py).
    info = gw.server("echo")
    assert info["port"] is None and info["host"] == "127.0.0.1"
    assert gw.servers()["GATEWAY"]["port"] == gw.port


def test_ready_is_503_while_an_endpoint_starts(gw):
    # Starts a new endpoint whose model takes a while to load (NO_STARTUP_WAIT: 503 at once).
    resp = gw.post("/start_server", {"SIGNATURE": "slow_load", "LOAD_SECONDS": 2.0})
    assert resp.status_code == 200, resp.text
    # The front re-reads the route table at most every 50 ms: poll, do not expect it at once.
    # (A requests.Response with an error status is falsy: wait for a tuple holding it.)
    resp, = wait_until(lambda: (r := gw.get("/health/ready")).status_code == 503 and (r,),
                       timeout=5, message="/health/ready answers 503")
    assert resp.headers["Retry-After"] == "1"
    assert resp.json()["endpoints"]["slow_load"] == "STARTING"
    resp, = wait_until(lambda: (r := gw.run("slow_load")).status_code == 503 and (r,), timeout=5)
    assert assert_error(resp, 503)["STATE"] == "STARTING"
    # (Each front process has its own 50 ms cache: a 200 must also list slow_load READY.)
    wait_until(lambda: (r := gw.get("/health/ready")).status_code == 200
               and r.json()["endpoints"].get("slow_load") == "READY", timeout=20,
               message="ready again once slow_load has loaded")
    assert assert_ok(gw.run("slow_load"))["status"] == "loaded"


def test_support_update_status_without_support_process(gw):
    assert_error(gw.post("/support_update_status", {"SIGNATURE": "nobody"}), 404)


def test_framework_keys_may_come_from_the_module_config(gw):
    body = assert_ok(gw.run("b64_module_config", DATA=base64.b64encode(b"abc").decode()))
    assert base64.b64decode(body["OUT"]) == b"ABC"
