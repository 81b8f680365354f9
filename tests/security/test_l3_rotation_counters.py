"""Rotating a key keeps its counters: the new key goes on with the old one's quota
spent, rate buckets and concurrency slots (counters are the key lineage's), on SQLite
and on Redis; a key stored before lineages existed is its own lineage."""

from __future__ import annotations

import json
import sqlite3
import threading

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


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gw(request, module_gateways):
    extra = store_overlay(request.param, request)
    return ready(module_gateways(keyed_config(CONFIG_ENDPOINTS={
        "echo": {"SERVER_CLASS": "echo"}, "slow": {"SERVER_CLASS": "slow", "NR_WORKERS": 2}},
        **extra)))


def usage(gw, key: str) -> dict:
    return dict(assert_ok(requests.get(gw.url("/usage"), headers={"X-API-Key": key},
                                       timeout=10)))


def rotate(gw, key_id: str) -> dict:
    rotated = gw.post("/keys/rotate", {"KEY_ID": key_id, "GRACE": 60})
    assert rotated.status_code == 201, rotated.text
    return dict(rotated.json())


def test_rotation_keeps_the_quota_spent_and_the_rate_bucket(gw):
    made = make_key(gw, RATE="1/hour", BURST=4, QUOTA={"REQUESTS": 10, "PER": "day"},
                    ENDPOINT_LIMITS={"echo": {"RATE": "1/hour", "BURST": 5}})
    for _ in range(2):
        assert_ok(call(gw, made["KEY"]))
    assert usage(gw, made["KEY"])["USAGE"]["SPENT"] == 2
    new = rotate(gw, made["KEY_ID"])
    assert usage(gw, new["KEY"])["USAGE"]["SPENT"] == 2
    first = call(gw, new["KEY"])
    assert_ok(first)
    assert first.headers["RateLimit-Remaining"] == "1"  # 4 - 3, not a fresh bucket
    assert_ok(call(gw, made["KEY"]))  # the old key, in its grace: the same bucket
    body = assert_error(call(gw, new["KEY"]), 429)
    assert body["ERROR_TYPE"] == "rate_limited"
    assert usage(gw, new["KEY"])["USAGE"]["SPENT"] == 4
    assert usage(gw, made["KEY"])["USAGE"]["SPENT"] == 4
    assert new["LINEAGE"] == made["KEY_ID"] == made["LINEAGE"]
    # Rotated again: still the first key's lineage.
    again = rotate(gw, new["KEY_ID"])
    assert again["LINEAGE"] == made["KEY_ID"]
    assert usage(gw, again["KEY"])["USAGE"]["SPENT"] == 4


def test_rotation_keeps_the_concurrency_slots(gw, tmp_path):
    made = make_key(gw, MAX_CONCURRENT=1)
    marker = tmp_path / "started"
    held = threading.Thread(target=call, args=(gw, made["KEY"], "slow"),
                            kwargs={"SECONDS": 3, "MARKER": str(marker)})
    held.start()
    try:
        wait_until(marker.exists, timeout=10, message="the old key's request runs")
        new = rotate(gw, made["KEY_ID"])
        body = assert_error(call(gw, new["KEY"], "echo"), 429)
        assert body["ERROR_TYPE"] == "rate_limited" and "MAX_CONCURRENT" in body["ERROR"]
    finally:
        held.join(30)
    assert_ok(call(gw, new["KEY"], "echo"))


def test_a_key_stored_before_lineages_is_its_own(gw):
    made = make_key(gw, QUOTA={"REQUESTS": 10, "PER": "day"})
    stored_without_lineage(gw, made["KEY_ID"])
    assert_ok(call(gw, made["KEY"]))
    listed = [k for k in assert_ok(gw.get("/keys"))["KEYS"] if k["KEY_ID"] == made["KEY_ID"]]
    assert listed[0]["LINEAGE"] == made["KEY_ID"]
    new = rotate(gw, made["KEY_ID"])
    assert new["LINEAGE"] == made["KEY_ID"]
    assert usage(gw, new["KEY"])["USAGE"]["SPENT"] == 1


def stored_without_lineage(gw, key_id: str) -> None:
    """Rewrite a key's record as it was stored before keys had a lineage."""
    config = json.loads(gw.config_path.read_text())
    url = config.get("TENANTS_REDIS")
    if url:
        import redis

        base, _, prefix = url.partition("?prefix=")
        client = redis.Redis.from_url(base)
        digest = client.hget(f"{prefix}:tenants:ids", key_id).decode()
        record = json.loads(client.get(f"{prefix}:tenants:key:{digest}"))
        del record["lineage"]
        client.set(f"{prefix}:tenants:key:{digest}", json.dumps(record))
        client.close()
        return
    with sqlite3.connect(gw.workdir / "_cache" / "tenants.db") as db:
        record = json.loads(db.execute("SELECT record FROM keys WHERE id = ?",
                                       (key_id,)).fetchone()[0])
        del record["lineage"]
        db.execute("UPDATE keys SET record = ? WHERE id = ?", (json.dumps(record), key_id))


def test_a_job_of_a_rotated_key_is_charged_to_its_lineage(tmp_path):
    spec = TenantsSpec(enabled=True, db=str(tmp_path / "tenants.db"))
    store = open_store(None, spec.db)
    old, _secret = key_from_request({"TENANT": "acme", "QUOTA": {"UNITS": 100, "PER": "day"}})
    store.add(old)
    new, _secret = key_from_request({"TENANT": "acme", "QUOTA": {"UNITS": 100, "PER": "day"}})
    new.lineage = old.id
    store.add(new)

    def execute(inputs, customer=None, request_id=None, *_job):
        return 200, {"USAGE": 7}, []

    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    consumer = JobConsumer("ep", execute, JobsSpec(queue=url, results=url, ttl=60),
                           {"MAX_ATTEMPTS": 1, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30},
                           spec)
    consumer.queue, consumer.results = open_queue(url), open_results(url)
    try:
        job = Job(endpoint="ep", body={"SIGNATURE": "ep"}, tenant="acme", key_id=new.id)
        consumer.results.create(job)
        assert consumer.queue.enqueue(job)
        assert consumer.run_once(wait=1)
        label = period("day", job.submitted_at)[0]
        assert store._spent(old.id, label) == 7  # type: ignore[attr-defined]
        assert store._spent(new.id, label) == 0  # type: ignore[attr-defined]
    finally:
        consumer.queue.close()
        consumer.results.close()
