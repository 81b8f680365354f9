"""The job consumer's decisions, on a real SQLite queue, without processes or HTTP."""

from __future__ import annotations

import base64
import threading

import pytest

from basic_inference_server.queues import Job, JobsSpec, base, jobs_spec, open_queue, open_results
from basic_inference_server.queues.base import CANCELLED, CANCELLED_ERROR, DEAD, DONE, FAILED, QUEUED
from basic_inference_server.queues.consumer import MAX_PROGRESS, CancelWatch, JobRun, retry_delay
from basic_inference_server.server.consumer import JobConsumer
from basic_inference_server.worker import FileOutput
from tests.conftest import wait_until

SETTINGS = {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30}


class Endpoint:
    """A stand-in for the server's ``execute``: answers what it is told, counts calls."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, inputs, customer=None, request_id=None, flag=None, each=None):
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

    def run():
        entered.set()
        leave.wait(10)

    serving = threading.Thread(target=consumer.guard, args=(run,))
    serving.start()
    try:
        assert entered.wait(10)
        assert not consumer.run_once(wait=0.05)
        assert consumer.queue.depth("ep") == 1 and ep.calls == []
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


# -- cancellation and events ---------------------------------------------------------


def events(consumer, job_id, after=0):
    return [(seq, name) for seq, name, _data in consumer.results.events(job_id, after, 100)]


def test_a_job_cancelled_before_it_runs_is_a_dead_letter_never_run(make):
    ep = Endpoint((200, {"answer": 42}, []))
    consumer = make(ep)
    job_id = submit(consumer, X=1)
    assert consumer.results.update(job_id, {"STATUS": CANCELLED})
    assert consumer.run_once(wait=1)
    assert ep.calls == []
    assert consumer.results.get(job_id)["STATUS"] == CANCELLED
    dead = consumer.queue.dead_letters("ep")
    assert [(d.id, d.last_error) for d in dead] == [(job_id, CANCELLED_ERROR)]
    assert events(consumer, job_id) == [(1, "cancelled")]
    # A cancelled record keeps its status: a late update of a run cannot undo it.
    assert not consumer.results.update(job_id, {"STATUS": DONE})


def test_a_job_cancelled_as_it_is_claimed_is_a_dead_letter_never_run(make, monkeypatch):
    ep = Endpoint((200, {"answer": 42}, []))
    consumer = make(ep)
    job_id = submit(consumer)
    store_update = consumer.results.update

    def cancelled_first(one, fields, ttl=None):
        # The cancel lands between the consumer's look at the record and its RUNNING.
        if fields.get("STATUS") == "running":
            store_update(one, {"STATUS": CANCELLED})
        return store_update(one, fields, ttl)

    monkeypatch.setattr(consumer.results, "update", cancelled_first)
    assert consumer.run_once(wait=1)
    assert ep.calls == []
    assert [d.id for d in consumer.queue.dead_letters("ep")] == [job_id]
    assert events(consumer, job_id) == [(1, "cancelled")]


def test_a_running_job_sees_its_cancel_and_ends_cancelled(make):
    flags = []

    def execute(inputs, customer=None, request_id=None, flag=None, each=None):
        flags.append(flag)
        consumer.results.update(job_id, {"CANCEL_REQUESTED": 1.0})
        # The watcher reads the record and sets the job's flag (FlaskWorker.cancelled).
        wait_until(lambda: flag.is_set, timeout=10, message="the watcher saw the cancel")
        return 200, {"answer": "dropped"}, []

    consumer = make(execute)
    consumer.watch = CancelWatch(consumer.jobs.results, "ep")
    try:
        job_id = submit(consumer)
        assert consumer.run_once(wait=1)
    finally:
        consumer.watch.stop()
    record = consumer.results.get(job_id)
    assert record["STATUS"] == CANCELLED and "RESULT" not in record
    assert consumer.queue.depth("ep") == 0 and consumer.queue.dead_letters("ep") == []
    assert events(consumer, job_id) == [(1, "running"), (2, "cancelled")]
    assert len(flags) == 1


def test_progress_and_chunks_are_events_in_order_and_nothing_follows_the_last(make):
    def execute(inputs, customer=None, request_id=None, flag=None, each=None):
        flag.progress({"done": 0.5})
        each({"i": 0})
        each({"i": 1})
        return 200, {"CHUNKS": [{"i": 0}, {"i": 1}]}, []

    consumer = make(execute)
    job_id = submit(consumer)
    assert consumer.run_once(wait=1)
    got = consumer.results.events(job_id, 0, 100)
    assert [(s, n) for s, n, _ in got] == [(1, "running"), (2, "progress"), (3, "chunk"),
                                           (4, "chunk"), (5, "done")]
    assert got[1][2] == {"done": 0.5} and got[3][2] == {"i": 1}
    assert got[4][2]["STATUS"] == DONE and got[4][2]["RESULT"]["CHUNKS"][1] == {"i": 1}
    assert consumer.results.add_event(job_id, "chunk", {}, 60) == 0
    assert events(consumer, job_id, after=3) == [(4, "chunk"), (5, "done")]


def test_a_job_stores_at_most_max_events_and_always_its_last(make, monkeypatch):
    monkeypatch.setattr(base, "MAX_EVENTS", 4)
    consumer = make(Endpoint((200, {}, [])))
    results = consumer.results
    ids = [results.add_event("j" * 32, "chunk", {"i": i}, 60) for i in range(5)]
    assert ids == [1, 2, 3, 0, 0]
    assert results.add_event("j" * 32, "done", {}, 60) == 4
    assert [n for _, n, _ in results.events("j" * 32, 0, 10)] == ["chunk"] * 3 + ["done"]


def test_progress_takes_a_bounded_dict():
    flag = JobRun(lambda name, data: 1)
    with pytest.raises(TypeError):
        flag.progress([1, 2])
    with pytest.raises(ValueError):
        flag.progress({"x": "y" * (MAX_PROGRESS + 1)})
