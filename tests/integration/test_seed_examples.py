"""The seed README's example endpoints, support script and config, run unchanged.

``tests/fixtures/endpoints/{dummy_model_demo1,dummy_model_demo2,support_process}.py`` and
``tests/fixtures/seed_config.json`` are verbatim copies; the only addition to the config
is ``FIRST_SERVER_PORT: 0`` so that the servers take free ports.
"""

from __future__ import annotations

import json

import psutil
import pytest

from tests.conftest import FIXTURES, assert_error, assert_ok, wait_until


def seed_config() -> dict:
    config = json.loads((FIXTURES / "seed_config.json").read_text())
    config["FIRST_SERVER_PORT"] = 0
    return config


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(seed_config())


def test_demo2_predicts(gw):
    body = assert_ok(gw.run("dummy_model_demo2", INPUT_VALUE="5"))
    assert body["dummy_model_predict"] == "5*0 + 0 = 0 PREDICTED"


def test_demo2_by_get(gw):
    body = assert_ok(gw.get("/run", params={"SIGNATURE": "dummy_model_demo2",
                                           "INPUT_VALUE": "7"}))
    assert body["dummy_model_predict"] == "7*0 + 0 = 0 PREDICTED"


def test_demo1_answers(gw):
    body = assert_ok(gw.run("dummy_model_demo1", INPUT_VALUE="hello", LANGUAGE="en"))
    assert body["dummy_model_a_predict"] == "same-word-always"
    assert body["inputs"] == {"INPUT_VALUE": "hello", "LANGUAGE": "en"}
    assert body["worker_ver"] == "1.2.1"
    body = assert_ok(gw.run("dummy_model_demo1", INPUT_VALUE="x"))
    assert body["inputs"]["LANGUAGE"] == "ro"


def test_demo_input_error_is_400(gw):
    body = assert_error(gw.run("dummy_model_demo2"), 400)
    assert body["EXCEPTION"] == "ValueError"
    assert body["ERROR_MESSAGE"] == "INPUT_VALUE should be defined in inputs"
    assert body["ERROR_FILE"].endswith("dummy_model_demo2.py")
    # A value int() cannot parse fails in _predict: the endpoint's error, 500.
    body = assert_error(gw.run("dummy_model_demo2", INPUT_VALUE="five"), 500)
    assert body["EXCEPTION"] == "ValueError" and body["ERROR_STAGE"] == "_predict"


def test_servers_as_configured(gw):
    body = gw.servers()
    # The default server is listed first; disabled ones are not available.
    assert body["AVAIL_SERVERS"] == ["dummy_model_demo1", "dummy_model_demo2"]
    assert body["DEFAULT_SERVER"] == "dummy_model_demo1"
    servers = body["SERVERS"]
    assert servers["dummy_model_demo1"]["description"] == "Test_01 server #1"
    assert servers["support_process"]["kind"] == "support"
    assert servers["support_process"]["state"] == "READY"
    for name in ("dummy_model_demo1", "dummy_model_demo2"):
        info = servers[name]
        assert info["state"] == "READY" and info["nr_workers"] == 2
        wait_until(lambda n=name: gw.server(n)["workers_ready"] == 2, timeout=10)
        master = psutil.Process(info["pid"])
        assert len(master.children()) == 2


def test_bis_endpoints_are_not_started(gw):
    for name in ("dummy_model_demo1-bis", "dummy_model_demo2-bis"):
        info = gw.server(name)
        assert info["state"] == "STOPPED" and info["pid"] is None
        body = assert_error(gw.run(name, INPUT_VALUE="5"), 503)
        assert body["STATE"] == "STOPPED"


def test_start_a_bis_endpoint(gw):
    resp = gw.post("/start_server", {"SIGNATURE": "dummy_model_demo1-bis"})
    assert resp.status_code == 200, resp.text
    gw.wait_state("dummy_model_demo1-bis", "READY")
    body = assert_ok(gw.run("dummy_model_demo1-bis", INPUT_VALUE="w"))
    assert body["dummy_model_a_predict"] == "same-word-always"
    assert "dummy_model_demo1-bis" in gw.servers()["AVAIL_SERVERS"]


def test_start_a_bis_endpoint_with_its_own_settings(gw):
    # Keys the endpoint's _CONFIG declares can be overridden per start.
    resp = gw.post("/start_server", {"SIGNATURE": "dummy_model_demo2-bis", "WEIGHT": 3,
                                     "BIAS": 1, "NR_WORKERS": 1})
    assert resp.status_code == 200, resp.text
    info = gw.wait_state("dummy_model_demo2-bis", "READY")
    assert info["nr_workers"] == 1
    body = assert_ok(gw.run("dummy_model_demo2-bis", INPUT_VALUE="5"))
    assert body["dummy_model_predict"] == "5*3 + 1 = 16 PREDICTED"
    # The original endpoint keeps its own configuration.
    body = assert_ok(gw.run("dummy_model_demo2", INPUT_VALUE="5"))
    assert body["dummy_model_predict"] == "5*0 + 0 = 0 PREDICTED"


def test_notifications(gw):
    assert_ok(gw.run("dummy_model_demo2", INPUT_VALUE="41"))

    def found():
        notes = gw.get("/notifications").json()["NOTIFICATIONS"]
        return [n for n in notes if n["endpoint"] == "dummy_model_demo2"
                and n["msg"].startswith("Predicting on usr_input: 41 using")]

    note = wait_until(found, timeout=10, message="demo2's notification is listed")[0]
    assert note["notif"] == "log" and "WEIGHT" in note["msg"]
    assert_ok(gw.run("dummy_model_demo1", INPUT_VALUE="zz"))
    wait_until(lambda: any(n["endpoint"] == "dummy_model_demo1" and "zz" in n["msg"]
                           for n in gw.get("/notifications").json()["NOTIFICATIONS"]),
               timeout=10, message="demo1's notification is listed")


def test_system_status(gw):
    body = assert_ok(gw.get("/system_status"))
    status = body["SYSTEM_STATUS"]
    for key in ("mem_avail", "mem_gateway", "mem_servers", "mem_sys", "mem_total", "mem_used"):
        assert key in status
    assert status["mem_gateway"] > 0
    assert {"dummy_model_demo1", "dummy_model_demo2"} <= set(status["mem_servers"])
    assert status["mem_servers"]["dummy_model_demo1"] > 0


def test_support_process_reports(gw):
    # Last in this module: the seed config pings every 10 s.
    info = gw.server("support_process")
    assert psutil.Process(info["pid"]).is_running()

    def reported():
        return gw.get("/system_status").json()["SUPPORT_STATUS"].get("support_process")

    status = wait_until(reported, timeout=30, interval=0.25,
                        message="the seed support process reported")
    assert status["SIGNATURE"] == "support_process"
    assert status["msg"].startswith("Total Mem:")
    for key in ("total_memory", "available_memory", "system_used_memory", "app_used_memory",
                "total_disk", "available_disk"):
        assert isinstance(status[key], float)
