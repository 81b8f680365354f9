"""Bad input never crashes the gateway and never gets a 200: a status and a JSON ``ERROR``."""

from __future__ import annotations

import time

import pytest

from tests.conftest import FIXTURE_ENDPOINTS, assert_error, assert_ok, wait_until

MAX_SIZE = 256 * 1024
CONFIG = {
    "MAX_REQUEST_SIZE": MAX_SIZE,
    # One front process, so that a warmed-up keep-alive connection is the one reused.
    "GATEWAY_WORKERS": 1,
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 1},
        "slow": {"TIMEOUT": 0.5},
        "bad_pre": {},
        "bad_predict": {},
        "broken_load": {},
        "crash": {"NR_WORKERS": 2},
        "stopped_echo": {"SERVER_CLASS": "echo", "DISABLED": True},
    },
}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG, wait="settled")


def still_serving(gw):
    body = assert_ok(gw.run("echo", PING=1))
    assert body["echo"] == {"PING": 1}


def raise_line(module: str) -> int:
    text = (FIXTURE_ENDPOINTS / f"{module}.py").read_text()
    return next(i for i, line in enumerate(text.splitlines(), 1) if "RAISE-LINE" in line)


DEEP = b'{"SIGNATURE": "echo", "X": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_BODIES = {
    "list": (b'["echo"]', 400, "got list"),
    "string": (b'"echo"', 400, "got str"),
    "number": (b"5", 400, "got int"),
    "null": (b"null", 400, "got NoneType"),
    "empty": (b"", 400, "empty body"),
    "malformed JSON": (b'{"SIGNATURE": "echo",', 400, "not valid JSON"),
    "single quotes": (b"{'SIGNATURE': 'echo'}", 400, "not valid JSON"),
    "trailing garbage": (b'{"SIGNATURE": "echo"} x', 400, "not valid JSON"),
    "non-UTF-8": (b'{"SIGNATURE": "echo", "X": "\xff\xfe"}', 400, "not valid JSON"),
    "lone surrogate": (b'{"SIGNATURE": "echo", "X": "\\ud800"}', 400, "not valid JSON"),
    "nesting 100000 deep": (DEEP, 400, "not valid JSON"),
    "missing SIGNATURE": (b'{"INPUT_VALUE": 1}', 400, "missing SIGNATURE"),
    "null SIGNATURE": (b'{"SIGNATURE": null}', 400, "missing SIGNATURE"),
    "empty SIGNATURE": (b'{"SIGNATURE": ""}', 400, "non-empty string"),
    "number SIGNATURE": (b'{"SIGNATURE": 5}', 400, "got int"),
    "list SIGNATURE": (b'{"SIGNATURE": ["echo"]}', 400, "got list"),
    "unknown SIGNATURE": (b'{"SIGNATURE": "no_such_model"}', 404, "unknown SIGNATURE"),
    "too large": (b'{"SIGNATURE": "echo", "X": "' + b"a" * MAX_SIZE + b'"}', 413,
                  "over the limit"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_body(gw, case):
    data, status, fragment = BAD_BODIES[case]
    resp = gw.post("/run", data=data, headers={"Content-Type": "application/json"})
    body = assert_error(resp, status)
    assert fragment in body["ERROR"]
    still_serving(gw)


def test_unknown_signature_lists_the_endpoints(gw):
    body = assert_error(gw.run("no_such_model"), 404)
    assert "echo" in body["AVAIL_SERVERS"] and "crash" in body["AVAIL_SERVERS"]


def test_too_large_chunked_body(gw):
    def chunks():
        for _ in range(5):
            yield b"x" * (MAX_SIZE // 4)

    body = assert_error(gw.post("/run", data=chunks()), 413)
    assert body["MAX_REQUEST_SIZE"] == MAX_SIZE
    still_serving(gw)


def test_just_under_the_limit_passes(gw):
    filler = "a" * (MAX_SIZE - 200)
    body = assert_ok(gw.run("echo", X=filler))
    assert body["echo"]["X"] == filler


def test_pre_process_exception_is_400_with_where(gw):
    body = assert_error(gw.run("bad_pre", INPUT_VALUE=1), 400)
    assert body["EXCEPTION"] == "ValueError"
    assert body["ERROR_MESSAGE"] == "INPUT_VALUE is required by bad_pre"
    assert body["ERROR_STAGE"] == "_pre_process"
    assert body["ERROR_FILE"].endswith("bad_pre.py")
    assert body["ERROR_LINE"] == raise_line("bad_pre")
    assert "ValueError" in body["ERROR"]
    still_serving(gw)


def test_predict_exception_is_500_with_where(gw):
    body = assert_error(gw.run("bad_predict"), 500)
    assert body["EXCEPTION"] == "ZeroDivisionError"
    assert body["ERROR_MESSAGE"] == "model diverged in bad_predict"
    assert body["ERROR_STAGE"] == "_predict"
    assert body["ERROR_FILE"].endswith("bad_predict.py")
    assert body["ERROR_LINE"] == raise_line("bad_predict")
    # The worker survives its exception.
    assert_error(gw.run("bad_predict"), 500)
    still_serving(gw)


def test_timeout_is_504(gw, tmp_path):
    marker = tmp_path / "slow.marker"
    started = time.monotonic()
    body = assert_error(gw.run("slow", SECONDS=3, MARKER=str(marker)), 504)
    elapsed, answered = time.monotonic() - started, time.time()
    assert body["ERROR_TYPE"] == "timeout" and body["SIGNATURE"] == "slow"
    assert elapsed > 0.45, elapsed  # TIMEOUT is 0.5 s
    # The answer did not wait for the call: it came before the call's 3 s were over.
    wait_until(marker.exists, timeout=10, message="the slow call started")
    assert answered < marker.stat().st_mtime + 3
    still_serving(gw)
    # Once the slow call is done, the endpoint answers quick calls again.
    wait_until(lambda: gw.run("slow", SECONDS=0).status_code == 200, timeout=10)


def test_failed_load_is_503_with_retry_after_and_the_error(gw):
    resp = gw.run("broken_load")
    body = assert_error(resp, 503)
    assert int(resp.headers["Retry-After"]) >= 1
    assert "model weights missing: broken on purpose" in body["ERROR"]
    assert body["STATE"] in ("FAILED", "CRASHLOOP", "STARTING")
    info = gw.server("broken_load")
    assert "RuntimeError: model weights missing: broken on purpose" in info["last_error"]
    still_serving(gw)


def test_ready_is_503_while_an_endpoint_fails(gw):
    resp = gw.get("/health/ready")
    body = assert_error(resp, 503) if "ERROR" in resp.json() else resp.json()
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert body["status"] == "not ready"
    assert body["endpoints"]["broken_load"] != "READY"
    assert body["endpoints"]["echo"] == "READY"
    assert gw.get("/health/live").status_code == 200


def test_stopped_endpoint_is_503(gw):
    resp = gw.run("stopped_echo", A=1)
    body = assert_error(resp, 503)
    assert body["STATE"] == "STOPPED" and "Retry-After" in resp.headers
    still_serving(gw)


def test_crashing_worker_is_503_runs_once_and_recovers(gw, tmp_path):
    wait_until(lambda: len(gw.server("crash")["worker_pids"]) == 2, timeout=10)
    before = set(gw.server("crash")["worker_pids"])
    for _ in range(6):  # the front now holds kept-alive connections to the workers
        assert assert_ok(gw.run("crash"))["status"] == "alive"
    log = tmp_path / "crashes.log"
    body = assert_error(gw.run("crash", CRASH=True, LOG=str(log)), 503)
    assert body["SIGNATURE"] == "crash"
    # The request that killed a worker is not sent again (to kill another one).
    assert len(log.read_text().split()) == 1, log.read_text()
    # gunicorn replaces the dead worker; both answer again.
    wait_until(lambda: len(set(gw.server("crash")["worker_pids"]) - before) == 1
               and len(gw.server("crash")["worker_pids"]) == 2, timeout=15,
               message="the dead crash worker is replaced")
    for _ in range(4):
        assert assert_ok(gw.run("crash"))["status"] == "alive"
    still_serving(gw)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_wrong_method_on_run_is_405(gw, method):
    import requests

    resp = requests.request(method, gw.url("/run"), json={"SIGNATURE": "echo"}, timeout=10)
    assert_error(resp, 405)


def test_unknown_path_is_404(gw):
    body = assert_error(gw.get("/no/such/path"), 404)
    assert "/get_paths" in body["ERROR"]


def test_wrong_method_on_management_is_405(gw):
    assert_error(gw.get("/kill_server"), 405)


def test_bad_management_bodies(gw):
    json_type = {"Content-Type": "application/json"}
    assert_error(gw.post("/kill_server", data=b"[1]", headers=json_type), 400)
    assert_error(gw.post("/kill_server", data=b"{", headers=json_type), 400)
    assert_error(gw.post("/kill_server", {}), 400)
    assert_error(gw.post("/kill_server", {"SIGNATURE": "ghost"}), 404)
    assert_error(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 0}), 400)
    assert_error(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": "2"}), 400)
    assert_error(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": True}), 400)
    assert_error(gw.post("/reload_server", {"SIGNATURE": "stopped_echo"}), 409)
    assert_error(gw.post("/shutdown", {"SIGNATURE": "please"}), 400)
    assert_error(gw.post("/shutdown", {}), 400)
    still_serving(gw)
    assert gw.proc.poll() is None
