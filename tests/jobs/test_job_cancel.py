"""``DELETE /jobs/<id>`` through a real gateway, on SQLite and a real Redis (the first
test also on RabbitMQ and SQS): a waiting job never runs (a dead letter), a running one
is stopped (a polling ``_predict`` sees ``self.cancelled()``, a streaming one's
generator is closed), a finished one is 409."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import assert_ok, wait_until
from tests.jobs.jobs_client import record, submit, wait_finished
from tests.jobs.sse import delete, read_events


def counter(path: Path) -> tuple[str, int]:
    """What the streamer endpoint last wrote to its COUNTER file: (word, count)."""
    if not path.exists():
        return "", 0
    word, _, count = path.read_text().partition(" ")
    return word, int(count)


def wait_status(gw, job_id: str, status: str) -> dict:
    return wait_until(lambda: (r := record(gw, job_id))["STATUS"] == status and r,
                      timeout=30, message=f"job {job_id} {status}")


# On RabbitMQ and SQS (moto's server) the consumer that claims a cancelled job
# dead-letters it unrun; SQLite does it at once.
@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq", "sqs"], indirect=True)
def test_cancel_a_waiting_job_and_a_running_polling_one(queue_url, gateways, tmp_path):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 1}}})
    first, second = tmp_path / "first", tmp_path / "second"
    running = submit(gw, "streamer", POLL_MS=10, MAX_POLLS=100_000, COUNTER=str(first))
    wait_until(lambda: counter(first)[0] == "polled", timeout=30, message="first job runs")
    # The one worker is busy: this one waits in the queue.
    waiting = submit(gw, "streamer", N=3, COUNTER=str(second))
    resp = delete(gw, waiting)
    assert resp.status_code == 200, resp.text
    assert resp.json()["STATUS"] == "cancelled"
    again = delete(gw, waiting)  # idempotent
    assert again.status_code == 200 and again.json()["STATUS"] == "cancelled", again.text

    resp = delete(gw, running)
    assert resp.status_code == 202, resp.text
    assert resp.json()["STATUS"] == "running" and resp.json()["CANCEL_REQUESTED"]
    rec = wait_status(gw, running, "cancelled")
    assert "RESULT" not in rec
    word, polls = wait_until(lambda: (c := counter(first))[0] == "stopped" and c, timeout=10,
                             message="the polling _predict saw self.cancelled()")
    assert polls >= 1
    assert delete(gw, running).status_code == 200

    # The waiting job is a dead letter, never run (its endpoint never wrote its COUNTER).
    dead = wait_until(lambda: [d for d in assert_ok(gw.get(
        "/jobs/dead", params={"SIGNATURE": "streamer"}))["DEAD_LETTERS"]
        if d["JOB_ID"] == waiting], timeout=30, message="the cancelled job is a dead letter")
    assert "cancelled" in dead[0]["LAST_ERROR"]
    assert not second.exists()
    assert record(gw, waiting)["STATUS"] == "cancelled"

    # A job that is over cannot be cancelled; an unknown one is 404.
    done = submit(gw, "streamer", N=1)
    assert wait_finished(gw, done)["STATUS"] == "done"
    resp = delete(gw, done)
    assert resp.status_code == 409 and "already over" in resp.json()["ERROR"], resp.text
    assert record(gw, done)["STATUS"] == "done"
    assert delete(gw, "0" * 32).status_code == 404

    with httpx.Client(base_url=gw.base, timeout=30) as client:
        assert [e[1] for e in read_events(client, waiting)] == ["queued", "cancelled"]
        names = [e[1] for e in read_events(client, running)]
        assert names == ["queued", "running", "cancelled"]


@pytest.mark.parametrize("queue_url", ["sqlite", "redis"], indirect=True)
def test_cancel_a_running_streaming_job_closes_its_generator(queue_url, gateways, tmp_path):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 1}}})
    made = tmp_path / "made"
    job_id = submit(gw, "streamer", N=100_000, DELAY_MS=10, COUNTER=str(made))
    wait_until(lambda: counter(made)[1] >= 3, timeout=30, message="the stream runs")
    assert delete(gw, job_id).status_code == 202
    wait_status(gw, job_id, "cancelled")
    word, count = wait_until(lambda: (c := counter(made))[0] in ("exit", "closed") and c,
                             timeout=10, message="the generator ended")
    assert word == "exit"  # closed by GeneratorExit at its yield
    assert count < 100_000
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        events = read_events(client, job_id)
    ids = [e[0] for e in events]
    assert ids == list(range(1, len(ids) + 1))
    names = [e[1] for e in events]
    assert names[:2] == ["queued", "running"] and names[-1] == "cancelled"
    chunks = [e[2]["i"] for e in events if e[1] == "chunk"]
    assert chunks == list(range(len(chunks))) and 3 <= len(chunks) <= count
