"""The job consumer's decisions, on a real SQLite queue, without processes or HTTP."""

from __future__ import annotations

import base64
import threading

import pytest

from basic_inference_server.queues import Job, JobsSpec, jobs_spec, open_queue, open_results
from basic_inference_server.queues.base import DEAD, DONE, FAILED, QUEUED
from basic_inference_server.queues.consumer import retry_delay
from basic_inference_server.server.consumer import JobConsumer
from basic_inference_server.worker import FileOutput

SETTINGS = {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30}


class Endpoint:
    """A stand-in for the server's ``execute``: answers what it is told, counts calls."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, inputs, customer=None, request_id=None):
        self.calls.append(inputs)
        outcome = self.outcomes[min(len(self.calls), len(self.outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def make(tmp_path):
    made = []

    def build(execute, **settings):
        url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
        consumer = JobConsumer("ep", execute, JobsSpec(queue=url, results=url, ttl=60),
                               {**SETTINGS, **settings})
        consumer.queue, consumer.results = open_queue(url), open_results(url)
        made.append(consumer)
        return consumer

    yield build
    for consumer in made:
        consumer.queue.close()


def submit(consumer, **body):
    job = Job(endpoint="ep", body={"SIGNATURE": "ep", **body})
    consumer.results.create(job)
    assert consumer.queue.enqueue(job)
    return job.id


def test_a_200_is_stored_done_and_acked(make):
    ep = Endpoint((200, {"answer": 42}, []))
    consumer = make(ep)
    job_id = submit(consumer, X=1)
    assert consumer.run_once(wait=1)
    record = consumer.results.get(job_id)
    assert record["STATUS"] == DONE and record["RESULT"] == {"answer": 42}
    assert record["HTTP_STATUS"] == 200 and record["ATTEMPTS"] == 1
    assert ep.calls == [{"SIGNATURE": "ep", "X": 1}]
    assert consumer.queue.depth("ep") == 0
    assert not consumer.run_once(wait=0)


def test_a_4xx_fails_at_once(make):
    consumer = make(Endpoint((400, {"ERROR": "bad input"}, [])))
    job_id = submit(consumer)
    assert consumer.run_once(wait=1)
    record = consumer.results.get(job_id)
    assert record["STATUS"] == FAILED and record["HTTP_STATUS"] == 400
    assert consumer.queue.depth("ep") == 0 and consumer.queue.dead_letters("ep") == []


def test_failures_retry_then_go_dead_with_the_last_error(make):
    ep = Endpoint((500, {"ERROR": "first"}, []), RuntimeError("second"), (503, {"ERROR": "third"}, []))
    consumer = make(ep)
    job_id = submit(consumer)
    assert consumer.run_once(wait=1)
    record = consumer.results.get(job_id)
    assert record["STATUS"] == QUEUED and record["LAST_ERROR"] == "first"
    assert consumer.run_once(wait=1)
    assert consumer.results.get(job_id)["LAST_ERROR"] == "RuntimeError: second"
    assert consumer.run_once(wait=1)
    record = consumer.results.get(job_id)
    assert record["STATUS"] == DEAD and record["ATTEMPTS"] == 3 and record["LAST_ERROR"] == "third"
    assert [(j.id, j.last_error, j.attempts) for j in consumer.queue.dead_letters("ep")] == [
        (job_id, "third", 3)]
    assert len(ep.calls) == 3 and not consumer.run_once(wait=0)


def test_a_job_that_keeps_killing_its_worker_goes_dead_unrun(make):
    ep = Endpoint((200, {}, []))
    consumer = make(ep)
    job_id = submit(consumer)
    for _ in range(3):  # three consumers claimed it and died without an answer
        assert consumer.queue.claim("ep", "lost", 1.0, 0.01)
    assert consumer.run_once(wait=1)
    assert ep.calls == []
    record = consumer.results.get(job_id)
    assert record["STATUS"] == DEAD and "worker died" in record["LAST_ERROR"]


def test_a_file_answer_is_stored_as_base64(make):
    consumer = make(Endpoint((200, FileOutput(data=b"\x00\x01", filename="a.bin"), [])))
    job_id = submit(consumer)
    assert consumer.run_once(wait=1)
    stored = consumer.results.get(job_id)["RESULT"]["FILE"]
    assert stored["filename"] == "a.bin" and base64.b64decode(stored["base64"]) == b"\x00\x01"


def test_no_claim_while_a_request_is_served(make):
    ep = Endpoint((200, {}, []))
    consumer = make(ep)
    submit(consumer)
    entered, leave = threading.Event(), threading.Event()

    def request_app(environ, start_response):
        if environ["PATH_INFO"] == "/run":
            entered.set()
            leave.wait(10)
        return [environ["PATH_INFO"].encode()]

    app = consumer.guard(request_app)
    serving = threading.Thread(target=app, args=({"PATH_INFO": "/run"}, None))
    serving.start()
    try:
        assert entered.wait(10)
        assert not consumer.run_once(wait=0.05)
        assert consumer.queue.depth("ep") == 1 and ep.calls == []
        # Health probes do not wait for the gate.
        assert app({"PATH_INFO": "/health"}, None) == [b"/health"]
    finally:
        leave.set()
        serving.join(10)
    assert consumer.run_once(wait=1) and len(ep.calls) == 1


def test_a_stopping_consumer_gives_back_what_it_claimed(make):
    ep = Endpoint((200, {}, []))
    consumer = make(ep)
    job_id = submit(consumer)
    consumer.stop()
    assert not consumer.run_once(wait=1)
    assert ep.calls == []
    again = consumer.queue.claim("ep", "other", 1.0, 30)
    assert again.job.id == job_id and again.job.attempts == 1


def test_retry_delay_doubles_up_to_a_minute():
    assert [retry_delay(1, n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(1, 30) == 60 and retry_delay(0, 5) == 0


def test_jobs_spec_resolves_sqlite_in_the_cache(tmp_path):
    spec = jobs_spec("sqlite", None, 10, tmp_path)
    assert spec.queue == spec.results == f"sqlite://{tmp_path.resolve() / 'jobs.sqlite3'}"
    spec = jobs_spec("redis://h:6379/0?prefix=x", None, 10, tmp_path)
    assert spec.results == spec.queue
    spec = jobs_spec("amqp://h/%2F", None, 10, tmp_path)
    assert spec.results.startswith("sqlite://")
