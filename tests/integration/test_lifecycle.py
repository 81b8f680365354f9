"""Starting, stopping and failing endpoints at runtime; discovery errors; startup wait."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.conftest import assert_error, assert_ok, is_gone, wait_until, write_endpoint

CONFIG = {
    # /run to a starting endpoint waits for it (up to its TIMEOUT) instead of a 503.
    "NO_STARTUP_WAIT": False,
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 2},
        "spare": {"SERVER_CLASS": "echo", "DISABLED": True},
    },
}

NEW_ENDPOINT = '''
from basic_inference_server import FlaskWorker


class NewOneWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs.get("X", 0)

    def _predict(self, x):
        return x * 10

    def _post_process(self, y):
        return {"new_one": y}
'''


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def stop(gw, name):
    resp = gw.post("/kill_server", {"SIGNATURE": name})
    assert resp.status_code == 200, resp.text
    return gw.wait_state(name, "STOPPED")


def test_start_an_endpoint_added_after_start(gw):
    write_endpoint(gw.endpoints_dir, "new_one", NEW_ENDPOINT)
    assert_error(gw.run("new_one", X=1), 404)
    resp = gw.post("/start_server", {"SIGNATURE": "new_one", "NR_WORKERS": 1})
    assert resp.status_code == 200, resp.text
    # NO_STARTUP_WAIT is false: this call waits for the endpoint to come up.
    body = assert_ok(gw.run("new_one", X=4, _timeout=30))
    assert body["new_one"] == 40
    info = gw.server("new_one")
    assert info["state"] == "READY" and info["nr_workers"] == 1 and info["module"] == "new_one"
    assert "new_one" in gw.servers()["AVAIL_SERVERS"]


def test_start_server_errors(gw):
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "not_a_file"}), 404)
    assert "not_a_file.py not found" in body["ERROR"] and "echo" in body["ERROR"]
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "echo3", "SERVER_CLASS": "echo",
                                                  "NR_WORKERS": "two"}), 400)
    assert "NR_WORKERS must be int" in body["ERROR"]
    assert_error(gw.post("/start_server", {}), 400)
    assert_error(gw.post("/start_server", {"SIGNATURE": "bad name!"}), 400)
    # Nothing half-registered.
    servers = gw.servers()["SERVERS"]
    assert not {"not_a_file", "echo2", "echo3", "bad name!"} & set(servers)


def test_start_a_running_endpoint_is_a_no_op(gw):
    pid = gw.server("echo")["pid"]
    resp = gw.post("/start_server", {"SIGNATURE": "echo"})
    assert resp.status_code == 200 and "already READY" in resp.json()["RESULT"]
    assert gw.server("echo")["pid"] == pid


def test_kill_server_then_run_is_503_then_start_again(gw):
    assert_ok(gw.run("spare")) if gw.state("spare") == "READY" else None
    resp = gw.post("/start_server", {"SIGNATURE": "spare"})
    assert resp.status_code == 200, resp.text
    info = gw.wait_state("spare", "READY")
    procs = [psutil.Process(pid) for pid in [info["pid"], *info["worker_pids"]]]
    assert_ok(gw.run("spare", A=1))
    stop(gw, "spare")
    wait_until(lambda: all(map(is_gone, procs)), timeout=10, message="spare's processes exit")
    body = assert_error(gw.run("spare", A=1), 503)
    assert body["STATE"] == "STOPPED"
    assert "spare" not in gw.servers()["AVAIL_SERVERS"]
    assert_ok(gw.run("echo"))  # the others are not disturbed
    resp = gw.post("/start_server", {"SIGNATURE": "spare"})
    assert resp.status_code == 200, resp.text
    assert assert_ok(gw.run("spare", A=2, _timeout=30))["echo"] == {"A": 2}


DISCOVERY_ERRORS = {
    "no_class": ["no_class.py: no worker class found", "class NoClassWorker(FlaskWorker)"],
    "two_classes": ["AlphaWorker, BetaWorker", "none named TwoClassesWorker"],
    "wrong_base": ["class WrongBaseWorker does not derive from FlaskWorker"],
    "import_error": ["import_error.py:", "ModuleNotFoundError",
                     "bis_test_module_that_does_not_exist"],
}


@pytest.mark.parametrize("name", list(DISCOVERY_ERRORS))
def test_discovery_errors_are_reported_by_name(gw, name):
    resp = gw.post("/start_server", {"SIGNATURE": name})
    assert resp.status_code == 200, resp.text
    try:
        info = wait_until(lambda: (i := gw.server(name))["last_error"] and i, timeout=20,
                          message=f"{name}'s discovery error is reported")
        for fragment in DISCOVERY_ERRORS[name]:
            assert fragment in info["last_error"]
        assert info["state"] in ("FAILED", "CRASHLOOP", "STARTING")
        started = time.monotonic()
        body = assert_error(gw.run(name), 503)
        # Waiting for startup ends as soon as the load has failed.
        assert time.monotonic() - started < 10
        for fragment in DISCOVERY_ERRORS[name]:
            assert fragment in body["ERROR"]
        assert_ok(gw.run("echo"))
    finally:
        stop(gw, name)


def test_run_waits_for_a_starting_endpoint(gw):
    resp = gw.post("/start_server", {"SIGNATURE": "slow_load", "LOAD_SECONDS": 1.0})
    assert resp.status_code == 200, resp.text
    started = time.monotonic()
    body = assert_ok(gw.run("slow_load", _timeout=30))
    assert body["status"] == "loaded"
    assert time.monotonic() - started > 0.3


def test_run_to_an_endpoint_that_fails_to_load_does_not_wait_its_timeout(gw):
    timeout = 30
    resp = gw.post("/start_server", {"SIGNATURE": "broken_load", "TIMEOUT": timeout})
    assert resp.status_code == 200, resp.text
    try:
        started = time.monotonic()
        body = assert_error(gw.run("broken_load", _timeout=40), 503)
        assert time.monotonic() - started < timeout / 3, "waited for a model that had failed to load"
        assert "broken on purpose" in body["ERROR"]
    finally:
        stop(gw, "broken_load")


def test_kill_server_twice_and_unknown(gw):
    write_endpoint(gw.endpoints_dir, "tmp_echo", (gw.endpoints_dir / "echo.py").read_text())
    resp = gw.post("/start_server", {"SIGNATURE": "tmp_echo"})
    assert resp.status_code == 200, resp.text
    gw.wait_state("tmp_echo", "READY")
    stop(gw, "tmp_echo")
    resp = gw.post("/kill_server", {"SIGNATURE": "tmp_echo"})
    assert resp.status_code == 200 and resp.json()["state"] == "STOPPED"
    assert_error(gw.post("/kill_server", {"SIGNATURE": "ghost"}), 404)
