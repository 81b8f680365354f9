"""X-Request-Deadline (deadlines.py): a request whose deadline passes while it waits is
answered 504 deadline_exceeded and its _predict never starts; the endpoint's TIMEOUT caps
a longer one; a malformed one is a 400."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from tests.conftest import Gateway, assert_error, assert_ok, wait_until


@pytest.fixture(scope="module")
def gw(module_gateways) -> Gateway:
    made = module_gateways({"CONFIG_ENDPOINTS": {
        "slow": {"NR_WORKERS": 1, "TIMEOUT": 30},
        "capped": {"SERVER_CLASS": "slow", "NR_WORKERS": 1, "TIMEOUT": 1}}})
    for name in ("slow", "capped"):
        made.wait_state(name, "READY", timeout=60)
    return made


def run(gw: Gateway, deadline: str | None, signature: str = "slow",
        **fields) -> requests.Response:
    headers = {"X-Request-Deadline": deadline} if deadline is not None else {}
    return requests.post(gw.url("/run"), json={"SIGNATURE": signature, **fields},
                         headers=headers, timeout=60)


def misses(gw: Gateway) -> float:
    return sum(float(line.split()[-1]) for line in gw.get("/metrics").text.splitlines()
               if line.startswith("bis_deadline_exceeded_total{") and 'endpoint="slow"' in line)


def test_a_request_in_time_is_answered(gw):
    assert_ok(run(gw, "5000", SECONDS=0.01))


def test_a_deadline_passed_while_waiting_never_starts_predict(gw, tmp_path: Path):
    busy, waited = tmp_path / "busy", tmp_path / "waited"
    before = misses(gw)
    first: list[requests.Response] = []
    runner = threading.Thread(target=lambda: first.append(
        run(gw, None, SECONDS=1.0, MARKER=str(busy))))
    runner.start()
    try:
        wait_until(busy.exists, timeout=20, message="the first request is running")
        late = run(gw, "200", SECONDS=0.01, MARKER=str(waited))
    finally:
        runner.join(timeout=30)
    body = assert_error(late, 504)
    assert body["ERROR_TYPE"] == "deadline_exceeded", body
    assert_ok(first[0])
    assert_ok(run(gw, None, SECONDS=0.01))  # the worker has taken the one after
    assert not waited.exists(), "the late request's _predict started"
    assert misses(gw) >= before + 1


def test_the_endpoint_timeout_caps_a_longer_deadline(gw):
    body = assert_error(run(gw, "60000", "capped", SECONDS=3), 504)
    assert body["ERROR_TYPE"] == "timeout", body


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5", "86400001", "9" * 30, ""])
def test_a_malformed_deadline_is_a_400(gw, value):
    body = assert_error(run(gw, value, SECONDS=0.01), 400)
    assert "X-Request-Deadline" in body["ERROR"]


def test_a_job_not_started_before_its_deadline_is_dead_unrun(gw, tmp_path: Path):
    from tests.jobs.jobs_client import wait_finished

    busy, waited = tmp_path / "job_busy", tmp_path / "job_waited"
    first = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow", "SECONDS": 1.0,
                                                 "MARKER": str(busy)}, timeout=30)
    assert first.status_code == 202, first.text
    wait_until(busy.exists, timeout=30, message="the first job is running")
    late = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow", "SECONDS": 0.01,
                                                "MARKER": str(waited)},
                         headers={"X-Request-Deadline": "200"}, timeout=30)
    assert late.status_code == 202, late.text
    done = wait_finished(gw, first.json()["JOB_ID"])
    assert done["STATUS"] == "done", done
    dead = wait_finished(gw, late.json()["JOB_ID"])
    assert dead["STATUS"] == "dead" and "expired" in dead["LAST_ERROR"], dead
    assert not waited.exists(), "the expired job ran"
    bad = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow"},
                        headers={"X-Request-Deadline": "later"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["ERROR_TYPE"] == "bad_request"


def test_a_remote_endpoint_gets_what_is_left_of_the_deadline(gw, gateways, tmp_path: Path):
    edge = gateways({"CONFIG_ENDPOINTS": {"far": {
        "URLS": [f"http://127.0.0.1:{gw.port}"], "REMOTE_SIGNATURE": "slow", "TIMEOUT": 30}}})
    edge.wait_state("far", "READY", timeout=60)
    busy, waited = tmp_path / "remote_busy", tmp_path / "remote_waited"
    first: list[requests.Response] = []
    runner = threading.Thread(target=lambda: first.append(
        run(gw, None, SECONDS=1.0, MARKER=str(busy))))
    runner.start()
    try:
        wait_until(busy.exists, timeout=20, message="the remote's worker is busy")
        late = run(edge, "300", "far", SECONDS=0.01, MARKER=str(waited))
    finally:
        runner.join(timeout=30)
    body = assert_error(late, 504)
    assert body["ERROR_TYPE"] == "deadline_exceeded", body
    assert_ok(first[0])
    assert_ok(run(gw, None, SECONDS=0.01))  # the remote's worker took the one after
    assert not waited.exists(), "the remote ran a request past its deadline"
