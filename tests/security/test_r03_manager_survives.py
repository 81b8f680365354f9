"""Row 3: no command and no event can kill the manager.

Bad values are refused before anything acts on them (400 naming the field); whatever
else goes wrong inside a command or an event is logged and answered 500 JSON. After
each, the manager and every process of the tree are the same and still serve.
"""

from __future__ import annotations

import json

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from tests.conftest import assert_error, assert_ok, wait_until
from tests.security.manager_socket import control, control_raw, core_pids, notify

MAX_WORKERS = 256  # the one NR_WORKERS bound (config.MAX_WORKERS)
CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {"echo": {}}}


@pytest.fixture(scope="module")
def gw(module_gateways):
    gw = module_gateways(CONFIG)
    wait_until(lambda: gw.servers()["GATEWAY"]["supervisor_pid"] and
               gw.server("echo")["worker_pids"], message="the tree is up")
    return gw


def assert_same_tree(gw, before):
    gw._check_alive()
    assert core_pids(gw) == before, "a process of the tree changed"
    assert_ok(gw.run("echo", A=1))


BAD_SETTINGS = [
    ("HOST", "a\u0000b"), ("HOST", "é" * 70), ("HOST", "x" * 300), ("HOST", ""), ("HOST", "a b"),
    ("PORT", 70000), ("PORT", -1), ("NR_WORKERS", 0), ("NR_WORKERS", MAX_WORKERS + 1),
    ("NR_WORKERS", 100000), ("TIMEOUT", 1e300), ("PING_INTERVAL", -1), ("MAX_ATTEMPTS", 10**30),
    ("GPUS", [True]), ("MODEL_MEMORY_BUDGET_MB", 1e300),
]


@pytest.mark.parametrize(("key", "value"), BAD_SETTINGS)
def test_bad_settings_are_400_naming_the_field(gw, key, value):
    before = core_pids(gw)
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "fresh", "SERVER_CLASS": "echo",
                                                  key: value}), 400)
    assert key in body["ERROR"] and body["ERROR_TYPE"] == "bad_request", body
    assert "fresh" not in gw.servers()["SERVERS"]
    assert_same_tree(gw, before)


def test_update_workers_shares_the_bound(gw):
    before = core_pids(gw)
    body = assert_error(gw.post("/update_workers", {"SIGNATURE": "echo",
                                                    "NR_WORKERS": MAX_WORKERS + 1}), 400)
    assert str(MAX_WORKERS) in body["ERROR"]
    with pytest.raises(ConfigError, match="NR_WORKERS"):
        parse_config({"CONFIG_ENDPOINTS": {"e": {"NR_WORKERS": MAX_WORKERS + 1}}})
    assert_same_tree(gw, before)


@pytest.mark.parametrize("raw", [
    b"not json\n", b"[1, 2]\n", b"null\n", b'{"cmd": 5}\n', b'{"cmd": "start_server", "args": [1]}\n',
    b'{"cmd": "__init__", "args": {}}\n', b'{"cmd": "health_sample", "args": {}}\n',
    b'{"cmd": "report_hung", "args": {"SIGNATURE": "echo", "generation": 1, "pids": ["x"]}}\n',
    b'{"cmd": "history", "args": {"samples": [1]}}\n', b"[" * 100000 + b"\n",
    b'{"cmd": "start_server", "args": {"SIGNATURE": "x", "HOST": NaN}}\n',
])
def test_bad_control_requests_are_answered_and_survived(gw, raw):
    before = core_pids(gw)
    reply = control_raw(gw, raw)
    assert reply is not None and reply["status"] >= 400, reply
    assert reply["body"]["ERROR"] and reply["body"]["ERROR_TYPE"], reply
    assert_same_tree(gw, before)


def test_a_failing_command_is_a_500_json(gw):
    before = core_pids(gw)
    refused = control(gw, "health_sample", {"system": 1})
    assert refused is not None and refused["status"] == 400, refused  # not its type
    # Of the command's type, but without the fields the handler reads inside ``system``.
    reply = control(gw, "health_sample", {"system": {}, "gpu": {}, "trees": {}})
    assert reply is not None and reply["status"] == 500, reply
    assert reply["body"]["ERROR_TYPE"] == "internal_error"
    assert "command health_sample failed" in gw.log_text() and "Traceback" in gw.log_text()
    assert_same_tree(gw, before)


@pytest.mark.parametrize("event", [
    b"[1]", b"\xff\xfe", b'{"event": "worker_ready", "endpoint": "echo", "generation": GEN, "pid": "x"}',
    b'{"event": "nworkers", "endpoint": "echo", "generation": GEN, "value": null}',
    b'{"event": "worker_exit", "endpoint": "echo", "generation": GEN, "pid": []}',
    b'{"event": "worker_ready", "endpoint": ["echo"]}',
])
def test_bad_events_are_survived(gw, event):
    before = core_pids(gw)
    generation = gw.server("echo")["generation"]
    notify(gw, event.replace(b"GEN", str(generation).encode()))
    # A control round trip after the datagram: the loop has read the event by then.
    assert control(gw, "ping", {})["status"] == 200
    assert_same_tree(gw, before)


def test_a_notification_too_deep_to_answer_is_dropped(gw):
    deep: dict = {"event": "notification", "endpoint": "echo", "msg": "deep"}
    node = deep
    for _ in range(300):
        node["x"] = {}
        node = node["x"]
    notify(gw, json.dumps(deep).encode())
    notify(gw, json.dumps({"event": "notification", "endpoint": "echo", "msg": "flat"}).encode())
    assert control(gw, "ping", {})["status"] == 200
    notes = assert_ok(gw.get("/notifications"))["NOTIFICATIONS"]
    assert any(n.get("msg") == "flat" for n in notes)
    assert not any(n.get("msg") == "deep" for n in notes)


def test_answers_stay_json(gw):
    reply = control(gw, "no_such_command", {})
    assert reply["status"] == 404 and reply["body"]["ERROR_TYPE"] == "not_found"
    assert json.dumps(reply)
