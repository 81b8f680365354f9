"""The endpoint server's WSGI app, in-process (Flask test client): no gunicorn, no manager."""

from __future__ import annotations

import base64

import pytest

from basic_inference_server.contracts import ServerSpec
from basic_inference_server.ipc import Notifier
from basic_inference_server.server.app import build_worker, create_app
from tests.conftest import FIXTURE_ENDPOINTS


def client(module, **worker_config):
    spec = ServerSpec(name=module, module=module, endpoints_dir=str(FIXTURE_ENDPOINTS),
                      host="127.0.0.1", port=0, socket="", nr_workers=1,
                      worker_config=worker_config, server_name="unit-box", app_version="9.9")
    worker = build_worker(spec, 0, Notifier(None))
    return create_app(spec, worker).test_client()


def test_answer_carries_metadata():
    c = client("echo")
    first = c.post("/run", json={"SIGNATURE": "echo", "A": 1}).get_json()
    second = c.post("/run", json={"SIGNATURE": "echo"}).get_json()
    assert first["echo"] == {"A": 1} and first["tag"] == "from-_CONFIG"
    for key in ("ver", "app_ver", "time", "call_id", "worker_id", "worker_pid", "host", "server"):
        assert key in first
    assert first["server"] == "unit-box" and first["app_ver"] == "9.9"
    assert first["worker_id"] == "echo:0" and first["signature"] == "EchoWorker:0"
    assert (first["call_id"], second["call_id"]) == (1, 2)


def test_config_section_overrides_module_config():
    body = client("echo", TAG="from-gateway").post("/run", json={}).get_json()
    assert body["tag"] == "from-gateway"


def test_get_uses_query_fields():
    body = client("echo").get("/run?SIGNATURE=echo&INPUT_VALUE=7").get_json()
    assert body["echo"] == {"INPUT_VALUE": "7"}


def test_seed_demo2_in_process():
    body = client("dummy_model_demo2").post("/run", json={"INPUT_VALUE": "5"}).get_json()
    assert body["dummy_model_predict"] == "5*0 + 0 = 0 PREDICTED"
    body = client("dummy_model_demo2", WEIGHT=3, BIAS=1).post(
        "/run", json={"INPUT_VALUE": "5"}).get_json()
    assert body["dummy_model_predict"] == "5*3 + 1 = 16 PREDICTED"


@pytest.mark.parametrize("module,status,exc", [
    ("bad_pre", 400, "ValueError"), ("bad_predict", 500, "ZeroDivisionError"),
])
def test_hook_errors(module, status, exc):
    resp = client(module).post("/run", json={"SIGNATURE": module})
    body = resp.get_json()
    assert resp.status_code == status and body["EXCEPTION"] == exc
    assert body["ERROR_FILE"].endswith(f"{module}.py") and body["call_id"] == 1


def test_bad_json_is_400():
    resp = client("echo").post("/run", data=b"{", content_type="application/json")
    assert resp.status_code == 400 and "ERROR" in resp.get_json()


def test_file_download():
    resp = client("download").post("/run", json={"SIZE": 300})
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == "attachment; filename=x.bin"
    assert resp.data == bytes(i % 256 for i in range(300))


def test_base64_in_and_out():
    c = client("b64", BASE64_KEYS=["DATA"], BASE64_OUTPUTS=["OUT"])
    body = c.post("/run", json={"DATA": base64.b64encode(b"\x00\x01abc").decode()}).get_json()
    assert base64.b64decode(body["OUT"]) == b"cba\x01\x00" and body["LENGTH"] == 5
    resp = c.post("/run", json={"DATA": "%%%"})
    assert resp.status_code == 400 and resp.get_json()["FIELD"] == "DATA"


def test_unknown_path_and_method():
    c = client("echo")
    assert c.get("/nope").status_code == 404 and "ERROR" in c.get("/nope").get_json()
    assert c.put("/run").status_code == 405


def test_health():
    body = client("echo").get("/health").get_json()
    assert body["status"] == "ready" and body["endpoint"] == "echo"
