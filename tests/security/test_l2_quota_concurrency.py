"""A requests quota holds under concurrency: each request is reserved atomically when it
is admitted (on SQLite and on Redis), kept when answered 200 and given back otherwise;
jobs take theirs at submit and give it back when they do not end with a 200."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from basic_inference_server.queues import Job, JobsSpec, open_queue, open_results
from basic_inference_server.server.consumer import JobConsumer
from basic_inference_server.tenants import TenantsSpec
from basic_inference_server.tenants.keys import key_from_request
from basic_inference_server.tenants.store import open_store
from basic_inference_server.tenants.usage import period
from tests.conftest import assert_error, assert_ok, wait_until
from tests.tenants.conftest import call, keyed_config, make_key, ready, store_overlay

CONCURRENT = 20


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gw(request, module_gateways):
    extra = store_overlay(request.param, request)
    return ready(module_gateways(keyed_config(CONFIG_ENDPOINTS={
        "slow": {"SERVER_CLASS": "slow", "NR_WORKERS": 2},
        "flaky": {"SERVER_CLASS": "flaky", "MAX_ATTEMPTS": 1}}, **extra)))


def spent(gw, key: str) -> float:
    seen = assert_ok(requests.get(gw.url("/usage"), headers={"X-API-Key": key}, timeout=10))
    return float(seen["USAGE"]["SPENT"])


def at_once(count: int, call_one) -> list[requests.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _i: call_one(), range(count)))


def test_concurrent_calls_never_pass_a_requests_quota(gw):
    key = make_key(gw, QUOTA={"REQUESTS": 5, "PER": "day"})["KEY"]
    # Each call runs half a second: every one is admitted before any has answered.
    answers = at_once(CONCURRENT, lambda: call(gw, key, "slow", SECONDS=0.5))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == CONCURRENT - 5, statuses
    assert {a.json()["ERROR_TYPE"] for a in answers if a.status_code == 429} == {"quota_exceeded"}
    assert spent(gw, key) == 5


def test_an_answer_other_than_200_does_not_spend(gw):
    key = make_key(gw, QUOTA={"REQUESTS": 3, "PER": "day"})["KEY"]
    for _ in range(4):
        assert_error(call(gw, key, "flaky", FAIL=True), 500)
    assert_error(call(gw, key, "nope"), 404)
    assert spent(gw, key) == 0
    # Failing while others run: each is given back, the quota still holds exactly.
    answers = at_once(8, lambda: call(gw, key, "flaky", FAIL=True))
    assert {a.status_code for a in answers} <= {500, 429}
    assert spent(gw, key) == 0
    for _ in range(3):
        assert_ok(call(gw, key, "flaky"))
    assert assert_error(call(gw, key, "flaky"), 429)["SPENT"] == 3
    assert spent(gw, key) == 3


def test_jobs_take_the_quota_at_submit_and_give_back_what_fails(gw):
    key = make_key(gw, QUOTA={"REQUESTS": 3, "PER": "day"})["KEY"]
    failing = call(gw, key, "flaky", ASYNC=True, FAIL=True)
    assert failing.status_code == 202, failing.text
    # The failed job gives its request back once it is dead.
    wait_until(lambda: spent(gw, key) == 0, timeout=30, message="the failed job is given back")
    answers = at_once(CONCURRENT, lambda: call(gw, key, "flaky", ASYNC=True))
    statuses = [a.status_code for a in answers]
    assert statuses.count(202) == 3 and statuses.count(429) == CONCURRENT - 3, statuses
    assert spent(gw, key) == 3
    # A submission that is not queued is not charged.
    other = make_key(gw, QUOTA={"REQUESTS": 1, "PER": "day"})["KEY"]
    assert_error(call(gw, other, "nope", ASYNC=True), 404)
    assert spent(gw, other) == 0


def test_a_dead_job_gives_its_request_back_once_and_takes_it_again_if_requeued_and_done(
        tmp_path):
    spec = TenantsSpec(enabled=True, db=str(tmp_path / "tenants.db"))
    store = open_store(None, spec.db)
    key, _secret = key_from_request({"TENANT": "acme", "QUOTA": {"REQUESTS": 5}})
    store.add(key)
    answers = [(500, {"ERROR": "down"}), (500, {"ERROR": "down"}), (200, {"ok": True})]

    def execute(inputs, customer=None, request_id=None, *_job):
        status, body = answers.pop(0)
        return status, body, []

    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    consumer = JobConsumer("ep", execute, JobsSpec(queue=url, results=url, ttl=60),
                           {"MAX_ATTEMPTS": 1, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30},
                           spec)
    consumer.queue, consumer.results = open_queue(url), open_results(url)
    job = Job(endpoint="ep", body={"SIGNATURE": "ep"}, tenant="acme", key_id=key.id)
    label = period("day", job.submitted_at)[0]

    def spent_now() -> float:
        return float(store._spent(key.lineage, label))  # type: ignore[attr-defined]

    try:
        store.charge_now(key.lineage, label, 1.0)  # reserved at submit, as the front does
        consumer.results.create(job)
        assert consumer.queue.enqueue(job)
        for _ in range(3):  # dead, requeued and dead again, requeued and done
            assert consumer.run_once(wait=1)
            if answers:
                assert spent_now() == 0
                consumer.queue.requeue_dead("ep", job.id)  # as POST /jobs/requeue does
                consumer.results.update(job.id, {"STATUS": "queued",
                                                 "REQUEUED_AT": time.time()})
        assert consumer.results.get(job.id)["STATUS"] == "done"
        assert spent_now() == 1
    finally:
        consumer.queue.close()
        consumer.results.close()
