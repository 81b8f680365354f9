"""Row 9: every error is JSON with ``ERROR`` and ``ERROR_TYPE``, never a 500 page.

A Bearer token that is not ASCII is a JSON 401 (it was a 500 HTML page:
``compare_digest`` refuses non-ASCII text). A body nested deeper than
``protocol.MAX_JSON_DEPTH`` is a 400 wherever a body is parsed (the gateway's ``/run``,
``/jobs`` and management routes, an endpoint server's own ``/run``): orjson reads 1024
levels but writes only 254, so such a body was accepted and then broke the answer (500
on ``/run``, 503 "queue failed" on ``/jobs``). The manager's own errors gain their
``ERROR_TYPE`` at the front, and werkzeug's HTTP errors (413...) are JSON too.
"""

from __future__ import annotations

import orjson
import pytest
import requests

from basic_inference_server.errors import BadRequest, PayloadTooLarge
from basic_inference_server.protocol import MAX_JSON_DEPTH, json_depth_over, parse_body
from tests.conftest import assert_error, assert_ok

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True},
                               "stopped_echo": {"SERVER_CLASS": "echo", "DISABLED": True}}}
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def nested(depth: int, **fields) -> bytes:
    """A JSON object whose ``DATA`` field takes the whole to ``depth`` levels."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    head = orjson.dumps(fields)[:-1] + (b"," if fields else b"")
    return head + b'"DATA":' + inner + b"}"


def assert_json_error(resp: requests.Response, status: int, kind: str) -> dict:
    body = assert_error(resp, status)
    assert body["ERROR_TYPE"] == kind, body
    return body


# -- non-ASCII bearer tokens ---------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "Bearer t\u00e9st".encode(), "Bearer \u65e5\u672c\u8a9e".encode(), b"Bearer \xff\xfe",
    "Bearer \u00e9".encode("latin-1"), b"Bearer \x80abc",
])
@pytest.mark.parametrize("method,path", [("GET", "/list_servers"), ("POST", "/kill_server"),
                                         ("GET", "/jobs/dead?SIGNATURE=echo")])
def test_a_non_ascii_bearer_token_is_a_json_401(gw, value, method, path):
    resp = requests.request(method, gw.url(path), json={"SIGNATURE": "echo"}, timeout=10,
                            headers={"Authorization": value})
    assert_json_error(resp, 401, "unauthorized")
    assert gw.state("echo") == "READY"


# -- the depth policy, through the gateway ---------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 255, 300, 1000])
def test_a_deep_run_body_is_400(gw, depth):
    resp = gw.post("/run", data=nested(depth, SIGNATURE="echo"), headers=JSON_TYPE)
    body = assert_json_error(resp, 400, "bad_request")
    assert body["MAX_JSON_DEPTH"] == MAX_JSON_DEPTH
    assert_ok(gw.run("echo"))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 255, 1000])
@pytest.mark.parametrize("how", ["/jobs", "ASYNC"])
def test_a_deep_job_body_is_400_not_a_queue_failure(gw, depth, how):
    if how == "/jobs":
        resp = gw.post("/jobs", data=nested(depth, SIGNATURE="echo"), headers=JSON_TYPE)
    else:
        resp = gw.post("/run", data=nested(depth, SIGNATURE="echo", ASYNC=True), headers=JSON_TYPE)
    assert_json_error(resp, 400, "bad_request")


@pytest.mark.parametrize("path", ["/start_server", "/update_workers", "/jobs/requeue"])
def test_a_deep_management_body_is_400(gw, path):
    resp = gw.post(path, data=nested(300, SIGNATURE="stopped_echo"), headers=JSON_TYPE)
    assert_json_error(resp, 400, "bad_request")
    assert gw.state("stopped_echo") == "STOPPED"


def test_the_endpoint_servers_own_run_applies_the_same_limit(gw):
    port = gw.server("echo")["port"]
    resp = requests.post(f"http://127.0.0.1:{port}/run", data=nested(300, SIGNATURE="echo"),
                         headers=JSON_TYPE, timeout=10)
    assert_json_error(resp, 400, "bad_request")


def test_bodies_at_the_limit_and_wide_bodies_still_run(gw):
    body = assert_ok(gw.post("/run", data=nested(MAX_JSON_DEPTH, SIGNATURE="echo"),
                             headers=JSON_TYPE))
    assert "DATA" in body["echo"]
    wide = {"SIGNATURE": "echo", "ROWS": [{}] * 50_000, "TEXT": "[[[[" * 1000}
    assert len(assert_ok(gw.post("/run", wide))["echo"]["ROWS"]) == 50_000


# -- every error carries ERROR_TYPE ------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,kind", [
    ("/kill_server", {"SIGNATURE": "ghost"}, 404, "not_found"),
    ("/kill_server", {}, 400, "bad_request"),
    ("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 0}, 400, "bad_request"),
    ("/reload_server", {"SIGNATURE": "stopped_echo"}, 409, "conflict"),
])
def test_the_managers_errors_carry_error_type(gw, path, body, status, kind):
    assert_json_error(gw.post(path, body), status, kind)


def test_a_management_body_over_the_limit_is_a_json_413(gw):
    big = {"SIGNATURE": "echo", "PAD": "x" * (2 * 1024 * 1024)}
    assert_json_error(gw.post("/update_workers", big), 413, "payload_too_large")


@pytest.mark.parametrize("method,path,status,kind", [
    ("GET", "/no/such/path", 404, "not_found"),
    ("GET", "/kill_server", 405, "method_not_allowed"),
    ("DELETE", "/list_servers", 405, "method_not_allowed"),
])
def test_routing_errors_carry_error_type(gw, method, path, status, kind):
    assert_json_error(gw.get(path) if method == "GET" else
                      requests.request(method, gw.url(path), timeout=10), status, kind)


# -- the policy itself -------------------------------------------------------------------------

def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize("text", [
    '{"a": "[[[[[[[[[[[["}', '{"a": "\\\\"}', '{"a": "\\"[[[[", "b": [[[]]]}',
    '{"a": [{"b": [{"c": []}]}], "d": "]]]]]]]]"}', '{"k[[[[": {"]]": [1, {"x": "{{{"}]}}',
    '{"a": "\\\\\\"[[[[[[", "b": [[], [[]], [[[]]]]}',
])
@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5])
def test_depth_ignores_brackets_inside_strings(text, limit):
    assert json_depth_over(text.encode(), limit) == (_depth(orjson.loads(text)) > limit)


def test_depth_of_mixed_nesting():
    value = {"a": [{"b": [{"c": [1]}]}] * 3}  # 6 levels
    raw = orjson.dumps(value)
    assert _depth(value) == 6
    assert not json_depth_over(raw, 6) and json_depth_over(raw, 5)


def test_parse_body_limits():
    with pytest.raises(BadRequest):
        parse_body(nested(MAX_JSON_DEPTH + 1))
    assert parse_body(nested(MAX_JSON_DEPTH))["DATA"] is not None
    with pytest.raises(PayloadTooLarge):
        parse_body(b'{"a": 1}', max_size=4)
    assert parse_body(b'{"a": 1}', max_size=8) == {"a": 1}
    assert MAX_JSON_DEPTH + 8 < 254  # room for the levels answers and records wrap around a body
