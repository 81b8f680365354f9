"""The job consumer's ledger on real stores: a job's units, kept while the store is down."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from basic_inference_server.queues import Job, JobsSpec, open_queue, open_results
from basic_inference_server.server.consumer import JobConsumer
from basic_inference_server.tenants import TenantsSpec
from basic_inference_server.tenants.keys import key_from_request
from basic_inference_server.tenants.store import open_store
from basic_inference_server.tenants.usage import period
from tests.services import Service, start_redis

SETTINGS = {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30}


def consumer_for(tmp_path, tenants: TenantsSpec, answer: dict) -> tuple[JobConsumer, list]:
    seen: list = []

    def execute(inputs, customer=None, request_id=None, *_job):
        seen.append(customer)
        return 200, dict(answer), []

    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    consumer = JobConsumer("ep", execute, JobsSpec(queue=url, results=url, ttl=60), SETTINGS,
                           tenants)
    consumer.queue, consumer.results = open_queue(url), open_results(url)
    return consumer, seen


def submit(consumer: JobConsumer, tenant: str | None, key_id: str | None) -> str:
    job = Job(endpoint="ep", body={"SIGNATURE": "ep"}, tenant=tenant, key_id=key_id)
    consumer.results.create(job)
    assert consumer.queue.enqueue(job)
    return job.id


def test_a_jobs_units_go_to_its_key_and_its_tenant_reaches_the_endpoint(tmp_path):
    spec = TenantsSpec(enabled=True, db=str(tmp_path / "tenants.db"))
    store = open_store(None, spec.db)
    key, _secret = key_from_request({"TENANT": "acme", "QUOTA": {"UNITS": 100, "PER": "month"}})
    store.add(key)
    consumer, seen = consumer_for(tmp_path, spec, {"text": "hi", "USAGE": 7})
    try:
        job_id = submit(consumer, "acme", key.id)
        assert consumer.run_once(wait=1)
        assert seen == ["acme"]
        assert consumer.results.get(job_id)["RESULT"] == {"text": "hi"}
        label = period("month", time.time())[0]
        assert store._spent(key.id, label) == 7  # type: ignore[attr-defined]
        # A job without a key (keys were off when it was submitted) is not charged.
        submit(consumer, None, None)
        assert consumer.run_once(wait=1) and seen == ["acme", None]
        consumer.ledger.flush(final=True)
        rows = store.metered(time.strftime("%Y-%m-%d", time.gmtime()))
        assert [(r["tenant"], r["endpoint"], r["requests"], r["units"]) for r in rows] == \
            [("acme", "ep", 1.0, 7.0)]
    finally:
        consumer.queue.close()


def test_charges_wait_in_memory_while_redis_is_down(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    service, url = start_redis(tmp_path / "r1")
    spec = TenantsSpec(enabled=True, db=str(tmp_path / "unused.db"), redis=url)
    store = open_store(url, spec.db)
    key, _secret = key_from_request({"TENANT": "acme", "QUOTA": {"UNITS": 100, "PER": "day"}})
    store.add(key)
    consumer, _seen = consumer_for(tmp_path, spec, {"USAGE": 3})
    try:
        service.stop()
        submit(consumer, "acme", key.id)
        assert consumer.run_once(wait=1)  # the job is done: it ran, whatever the store says
        assert consumer.ledger.charges and consumer.ledger.meter
        again = Service("redis", tmp_path / "r2")
        port = str(urlsplit(url).port)
        again.spawn(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(tmp_path / "r2")])
        try:
            again.wait_ready(lambda: store.client().ping(), timeout=30)
            store.add(key)  # nothing was persisted: the key is back, its counters are not
            consumer.ledger.flush(final=True)
            assert not consumer.ledger.charges and not consumer.ledger.meter
            day = period("day", time.time())[0]
            assert store.client().hget(f"bis:tenants:usage:{key.id}", day) == b"3"
            rows = store.metered(time.strftime("%Y-%m-%d", time.gmtime()))
            assert [(r["tenant"], r["requests"], r["units"]) for r in rows] == [("acme", 1, 3)]
        finally:
            again.stop()
    finally:
        consumer.queue.close()
        for client in (store.client(), consumer.ledger.store.client()):
            client.close()
