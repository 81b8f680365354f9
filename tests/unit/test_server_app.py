"""The endpoint server worker process's app, in-process: ``/run`` through its entry,
other paths through the Flask test client; no gunicorn, no manager."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.inprocess import build, call, header, post, request


def test_answer_carries_metadata():
    app = build("echo")
    _status, first = post(app, {"SIGNATURE": "echo", "A": 1})
    _status, second = post(app, {"SIGNATURE": "echo"})
    assert first["echo"] == {"A": 1} and first["tag"] == "from-_CONFIG"
    for key in ("ver", "app_ver", "time", "call_id", "worker_id", "worker_pid", "host", "server"):
        assert key in first
    assert first["server"] == "unit-box" and first["app_ver"] == "9.9"
    assert first["worker_id"] == "echo:0" and first["signature"] == "EchoWorker:0"
    assert (first["call_id"], second["call_id"]) == (1, 2)


def test_config_section_overrides_module_config():
    assert post(build("echo", TAG="from-gateway"), {})[1]["tag"] == "from-gateway"


def test_get_uses_query_fields():
    answer, _chunks = call(build("echo"), request(method="GET",
                                                  query="SIGNATURE=echo&INPUT_VALUE=7&INPUT_VALUE=8"))
    assert answer.status == 200 and json.loads(answer.body)["echo"] == {"INPUT_VALUE": "7"}


def test_a_get_for_another_endpoint_is_refused():
    answer, _chunks = call(build("echo"), request(method="GET", query="SIGNATURE=other"))
    assert answer.status == 400 and json.loads(answer.body)["SERVER_SIGNATURE"] == "echo"


def test_seed_demo2_in_process():
    body = post(build("dummy_model_demo2"), {"INPUT_VALUE": "5"})[1]
    assert body["dummy_model_predict"] == "5*0 + 0 = 0 PREDICTED"
    body = post(build("dummy_model_demo2", WEIGHT=3, BIAS=1), {"INPUT_VALUE": "5"})[1]
    assert body["dummy_model_predict"] == "5*3 + 1 = 16 PREDICTED"


@pytest.mark.parametrize("module,status,exc", [
    ("bad_pre", 400, "ValueError"), ("bad_predict", 500, "ZeroDivisionError"),
])
def test_hook_errors(module, status, exc):
    got, body = post(build(module), {"SIGNATURE": module})
    assert got == status and body["EXCEPTION"] == exc
    assert body["ERROR_FILE"].endswith(f"{module}.py") and body["call_id"] == 1


def test_bad_json_is_400():
    answer, _chunks = call(build("echo"), request(body=b"{"))
    assert answer.status == 400 and "ERROR" in json.loads(answer.body)
    assert header(answer, "Content-Type") == "application/json"


def test_file_download():
    answer, _chunks = call(build("download"), request({"SIZE": 300}))
    assert answer.status == 200
    assert header(answer, "Content-Disposition") == "attachment; filename=x.bin"
    assert answer.body == bytes(i % 256 for i in range(300))


def test_base64_in_and_out():
    app = build("b64", BASE64_KEYS=["DATA"], BASE64_OUTPUTS=["OUT"])
    _status, body = post(app, {"DATA": base64.b64encode(b"\x00\x01abc").decode()})
    assert base64.b64decode(body["OUT"]) == b"cba\x01\x00" and body["LENGTH"] == 5
    status, body = post(app, {"DATA": "%%%"})
    assert status == 400 and body["FIELD"] == "DATA"


def test_unknown_path_and_method():
    app = build("echo")
    client = app.flask.test_client()
    assert client.get("/nope").status_code == 404 and "ERROR" in client.get("/nope").get_json()
    answer, _chunks = call(app, request(method="PUT"))
    assert answer.status == 405 and header(answer, "Allow") == "GET, HEAD, POST"


def test_health():
    body = build("echo").flask.test_client().get("/health").get_json()
    assert body["status"] == "ready" and body["endpoint"] == "echo"
