"""``DELETE /jobs/<id>`` in the front, on a real SQLite store, without processes: a cancel
that finds the job waiting makes it ``cancelled`` only if no consumer marked it running
in between; otherwise it asks the running job to stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from basic_inference_server.gateway.jobs import JobsFront
from basic_inference_server.queues import Job, JobsSpec
from basic_inference_server.queues.base import CANCELLED, CANCELLED_ERROR, QUEUED, RUNNING


@pytest.fixture
def front(tmp_path: Path) -> JobsFront:
    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    return JobsFront(JobsSpec(queue=url, results=url, ttl=60))


def submitted(front: JobsFront) -> str:
    queue, results = front.backends()
    job = Job(endpoint="ep", body={"SIGNATURE": "ep"})
    results.create(job)
    assert queue.enqueue(job)
    return job.id


def test_a_waiting_job_is_cancelled_and_dead_lettered_at_once(front: JobsFront) -> None:
    job_id = submitted(front)
    status, record = front.cancel(job_id)
    assert status == 200 and record["STATUS"] == CANCELLED
    queue, results = front.backends()
    assert queue.depth("ep") == 0
    assert [(d.id, d.last_error) for d in queue.dead_letters("ep")] == [(job_id, CANCELLED_ERROR)]
    assert [name for _seq, name, _data in results.events(job_id, 0, 10)] == [CANCELLED]
    assert front.cancel(job_id)[0] == 200  # again: nothing changes


def test_a_cancel_that_loses_the_race_with_a_consumer_stops_the_running_job(
        front: JobsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submitted(front)
    queue, results = front.backends()
    stale = results.get(job_id)
    assert stale is not None and stale["STATUS"] == QUEUED
    claim = queue.claim("ep", "consumer", 1.0, 30)
    assert claim is not None
    results.update(job_id, {"STATUS": RUNNING})
    read = iter([stale])  # the cancel read the record before the consumer marked it
    real = front.record
    monkeypatch.setattr(front, "record", lambda one, key=None: next(read, None) or real(one, key))
    status, record = front.cancel(job_id)
    assert status == 202 and record["STATUS"] == RUNNING and record["CANCEL_REQUESTED"]
    stored = results.get(job_id)
    assert stored is not None and stored["STATUS"] == RUNNING and stored["CANCEL_REQUESTED"]
    assert results.events(job_id, 0, 10) == []  # its consumer ends it, and says so
    assert queue.dead_letters("ep") == []
