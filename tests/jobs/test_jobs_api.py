"""Async jobs through a real gateway: submit, status, results, retries, dead letters,
back-pressure, expiry and a draining shutdown (SQLite; dead letters and back-pressure
also on real Redis and RabbitMQ)."""

from __future__ import annotations

import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHUTDOWN_CMD, assert_error, assert_ok, spawn_gateway, wait_until, with_test_defaults
from tests.jobs.jobs_client import queue_status, record, submit, wait_finished

# Fields that differ between two calls of the same request.
PER_CALL = {"time", "call_id", "worker_id", "worker_pid", "signature", "loaded_in"}


def test_async_run_and_post_jobs_give_the_sync_answer(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    sync = assert_ok(gw.run("echo", X=[1, 2], Y="z"))
    via_run = submit(gw, "echo", X=[1, 2], Y="z")
    resp = gw.post("/jobs", {"SIGNATURE": "echo", "X": [1, 2], "Y": "z"})
    assert resp.status_code == 202, resp.text
    via_jobs = resp.json()["JOB_ID"]
    for job_id in (via_run, via_jobs):
        rec = wait_finished(gw, job_id)
        assert rec["STATUS"] == "done" and rec["HTTP_STATUS"] == 200 and rec["ATTEMPTS"] == 1
        assert rec["JOB_ID"] == job_id and rec["SIGNATURE"] == "echo"
        assert rec["SUBMITTED_AT"] <= rec["STARTED_AT"] <= rec["FINISHED_AT"]
        strip = lambda body: {k: v for k, v in body.items() if k not in PER_CALL}  # noqa: E731
        assert strip(rec["RESULT"]) == strip(sync)
    # A GET never creates a job (tests/security/test_r10_get_run.py has the details).
    resp = gw.get("/run", params={"SIGNATURE": "echo", "ASYNC": "true", "Q": "1"})
    assert resp.status_code == 405, resp.text


def test_bad_submissions_and_unknown_jobs(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})
    assert_error(gw.get("/jobs/0123456789abcdef"), 404)
    body = assert_error(gw.post("/run", {"SIGNATURE": "nope", "ASYNC": True}), 404)
    assert "nope" in body["ERROR"]
    assert_error(gw.post("/jobs", {"ASYNC": True}), 400)
    assert_error(gw.post("/jobs", data=b"{not json"), 400)
    assert_error(gw.post("/jobs", data=b"[1, 2]"), 400)
    assert_error(gw.get("/jobs"), 405)


def test_rejected_input_fails_at_once_without_retry(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"jobs_noop": {"MAX_ATTEMPTS": 3}}})
    rec = wait_finished(gw, submit(gw, "jobs_noop"))  # no I: _pre_process raises
    assert rec["STATUS"] == "failed" and rec["HTTP_STATUS"] == 400 and rec["ATTEMPTS"] == 1
    assert rec["RESULT"]["ERROR_STAGE"] == "_pre_process"


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq"], indirect=True)
def test_failing_job_is_dead_after_max_attempts_then_requeued(queue_url, gateways, tmp_path):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {
        "jobs_noop": {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0.05}}})
    flag = tmp_path / "fixed"
    job_id = submit(gw, "jobs_noop", I=1, FAIL_UNLESS=str(flag))
    rec = wait_finished(gw, job_id)
    assert rec["STATUS"] == "dead" and rec["ATTEMPTS"] == 3
    assert "does not exist yet" in rec["LAST_ERROR"] and rec["HTTP_STATUS"] == 500

    assert_error(gw.get("/jobs/dead", params={"SIGNATURE": "jobs_noop"}, token="wrong"), 401)
    assert_error(gw.get("/jobs/dead"), 400)
    resp = gw.get("/jobs/dead", params={"SIGNATURE": "jobs_noop"})
    dead = assert_ok(resp)["DEAD_LETTERS"]
    assert [d["JOB_ID"] for d in dead] == [job_id]
    assert "does not exist yet" in dead[0]["LAST_ERROR"] and dead[0]["ATTEMPTS"] == 3
    assert queue_status(gw, "jobs_noop")["depth"] == 0

    assert_error(gw.post("/jobs/requeue", {"SIGNATURE": "jobs_noop", "JOB_ID": "nope"}), 404)
    flag.write_text("ok")
    body = assert_ok(gw.post("/jobs/requeue", {"SIGNATURE": "jobs_noop", "JOB_ID": job_id}))
    assert body["REQUEUED"] == [job_id]
    rec = wait_finished(gw, job_id)
    assert rec["STATUS"] == "done" and rec["RESULT"]["I"] == 1 and rec["ATTEMPTS"] == 1
    assert assert_ok(gw.get("/jobs/dead", params={"SIGNATURE": "jobs_noop"}))["DEAD_LETTERS"] == []


def metric(gw, name, endpoint):
    for family in text_string_to_metric_families(gw.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels.get("endpoint") == endpoint:
                return s.value
    raise AssertionError(f"{name} for {endpoint} not in /metrics")


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq"], indirect=True)
def test_submit_beyond_max_depth_is_429_and_depth_is_reported(queue_url, gateways):
    # Disabled: nothing consumes, so the queue fills.
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {
        "jobs_noop": {"DISABLED": True, "MAX_QUEUE_DEPTH": 3}}}, wait="settled")
    ids = [submit(gw, "jobs_noop", I=i) for i in range(3)]
    resp = gw.post("/run", {"SIGNATURE": "jobs_noop", "ASYNC": True, "I": 3})
    body = assert_error(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1 and body["MAX_QUEUE_DEPTH"] == 3
    status = wait_until(lambda: (s := queue_status(gw, "jobs_noop"))["oldest_age_s"] > 0 and s)
    assert status["depth"] == 3
    assert metric(gw, "bis_queue_depth", "jobs_noop") == 3
    assert metric(gw, "bis_queue_oldest_seconds", "jobs_noop") > 0
    assert record(gw, ids[0])["STATUS"] == "queued"

    assert_ok(gw.post("/start_server", {"SIGNATURE": "jobs_noop"}))
    for i, job_id in enumerate(ids):
        assert wait_finished(gw, job_id)["RESULT"]["I"] == i
    assert queue_status(gw, "jobs_noop") == {"depth": 0, "oldest_age_s": 0.0}
    assert submit(gw, "jobs_noop", I=4)


def test_results_expire_after_job_ttl(gateways):
    gw = gateways({"JOB_TTL": 1, "CONFIG_ENDPOINTS": {"echo": {}}})
    job_id = submit(gw, "echo", A=1)
    assert wait_finished(gw, job_id)["STATUS"] == "done"
    wait_until(lambda: gw.get(f"/jobs/{job_id}").status_code == 404, timeout=10,
               message="the result expired")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["/shutdown", "SIGTERM"])
def test_shutdown_finishes_the_running_job_and_acks_only_it(gateways, tmp_path, how):
    """A job running at shutdown finishes and is stored; one not started stays queued."""
    config = {"CONFIG_ENDPOINTS": {"jobs_noop": {"NR_WORKERS": 1}}}
    gw = gateways(config)
    runs = tmp_path / "runs"
    runs.mkdir()
    running = submit(gw, "jobs_noop", I=1, SECONDS=1.5, RUNS=str(runs))
    waiting = submit(gw, "jobs_noop", I=2, RUNS=str(runs))
    wait_until(lambda: record(gw, running)["STATUS"] == "running", message="the job runs")
    if how == "SIGTERM":
        os.kill(gw.pid, signal.SIGTERM)
    else:
        assert gw.post("/shutdown", SHUTDOWN_CMD).status_code == 200
    assert gw.proc.wait(timeout=30) == 0
    # Started again on the same _cache: the finished job is not run again.
    again = spawn_gateway(gw.workdir, with_test_defaults(config), endpoints=gw.endpoints_dir)
    gateways.started.append(again)
    again.wait_ready()
    assert record(again, running)["STATUS"] == "done"
    assert record(again, running)["ATTEMPTS"] == 1
    assert wait_finished(again, waiting)["RESULT"]["I"] == 2
    ran = sorted(line.split()[0] for f in runs.iterdir() for line in f.read_text().splitlines())
    assert ran == ["1", "2"], ran


def test_sync_calls_and_jobs_share_workers_but_never_overlap_in_one(gateways, tmp_path):
    """Jobs and synchronous /run calls on the same workers: all answered, and in each
    worker process the endpoint's code ran one call at a time."""
    gw = gateways({"CONFIG_ENDPOINTS": {"jobs_noop": {"NR_WORKERS": 2}}})
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = [submit(gw, "jobs_noop", I=i, SECONDS=0.05, RUNS=str(runs)) for i in range(20)]
    for i in range(100, 120):
        assert assert_ok(gw.run("jobs_noop", I=i, SECONDS=0.01, RUNS=str(runs)))["I"] == i
    for i, job_id in enumerate(ids):
        assert wait_finished(gw, job_id)["RESULT"]["I"] == i
    spans = {f.stem: sorted((float(a), float(b)) for _i, a, b in
                            (line.split() for line in f.read_text().splitlines()))
             for f in runs.iterdir()}
    assert sum(len(s) for s in spans.values()) == 40
    for pid, intervals in spans.items():
        for (_s1, end), (start, _e2) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"two calls overlapped in process {pid}"


def test_an_idempotency_key_returns_the_same_job(gateways, tmp_path):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    first = gw.post("/jobs", {"SIGNATURE": "echo", "INPUT_VALUE": 1},
                    headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    job_id = first.json()["JOB_ID"]
    again = gw.post("/jobs", {"SIGNATURE": "echo", "INPUT_VALUE": 1},
                    headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 202 and again.json()["JOB_ID"] == job_id
    assert again.headers["Idempotent-Replayed"] == "true"
    other = gw.post("/jobs", {"SIGNATURE": "echo", "INPUT_VALUE": 2},
                    headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 409 and other.json()["ERROR_TYPE"] == "conflict"
    fresh = gw.post("/jobs", {"SIGNATURE": "echo", "INPUT_VALUE": 1},
                    headers={"Idempotency-Key": "order-43"})
    assert fresh.status_code == 202 and fresh.json()["JOB_ID"] != job_id
    wait_until(lambda: gw.get(f"/jobs/{job_id}").json()["STATUS"] == "done", timeout=30,
               message="the job ran")
    done = gw.post("/jobs", {"SIGNATURE": "echo", "INPUT_VALUE": 1},
                   headers={"Idempotency-Key": "order-42"})
    assert done.json()["JOB_ID"] == job_id
    assert done.json()["STATUS"] == "done", "the same job, as it is now"
    bad = gw.post("/jobs", {"SIGNATURE": "echo"}, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 400
