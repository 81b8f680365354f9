"""An endpoint's failures are in the gateway's log: once, with the traceback and the request id.

An exception in ``_predict`` or ``_post_process`` reached the caller as a 500 and the
log had only the access line. Now the endpoint server logs it once, with its traceback
and the request id; a ``_pre_process`` refusal (400, the caller's fault) is one line.
Jobs are logged by their job id, as the job runner names their requests.
"""

from __future__ import annotations

import pytest

from tests.conftest import assert_error, assert_ok, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {"bad_predict": {}, "bad_pre": {}, "echo": {}}}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def lines_with(gw, text: str) -> list[str]:
    return [line for line in gw.log_text().splitlines() if text in line]


def test_a_failure_of_predict_is_logged_once_with_its_traceback(gw):
    resp = gw.post("/run", {"SIGNATURE": "bad_predict"}, headers={"X-Request-ID": "fail-7"})
    assert assert_error(resp, 500)["ERROR_TYPE"] == "endpoint_error"
    wait_until(lambda: lines_with(gw, "request fail-7 failed in _predict"), timeout=10,
               message="the failure is logged")
    log = gw.log_text()
    start = log.index("request fail-7 failed in _predict")
    traceback = log[start:start + 3000]
    assert "Traceback (most recent call last)" in traceback
    assert "bad_predict.py" in traceback and "ZeroDivisionError: model diverged" in traceback
    assert len(lines_with(gw, "request fail-7 failed")) == 1
    assert log.count("ZeroDivisionError: model diverged in bad_predict") == 1


def test_a_refusal_of_pre_process_is_one_line(gw):
    resp = gw.post("/run", {"SIGNATURE": "bad_pre"}, headers={"X-Request-ID": "refused-7"})
    assert assert_error(resp, 400)["EXCEPTION"] == "ValueError"
    # The answer to a later request on the same endpoint server: the refusal's line, if
    # any, is in the log by then.
    assert_ok(gw.post("/run", {"SIGNATURE": "echo"}))
    wait_until(lambda: lines_with(gw, "id refused-7"), timeout=10, message="the access line")
    server_lines = [line for line in lines_with(gw, "refused-7") if "id refused-7" not in line]
    assert len(server_lines) <= 1, server_lines
    # No traceback: its last line would name the exception as "ValueError: <message>".
    assert "ValueError: INPUT_VALUE is required by bad_pre" not in gw.log_text()


def test_a_failed_job_is_logged_by_its_job_id(gw):
    resp = gw.post("/jobs", {"SIGNATURE": "bad_predict"})
    assert resp.status_code == 202, resp.text
    job = resp.json()["JOB_ID"]
    wait_until(lambda: lines_with(gw, f"request job-{job} failed in _predict"), timeout=30,
               message="the job's failure is logged by its id")
