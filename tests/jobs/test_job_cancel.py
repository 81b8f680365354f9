"""``DELETE /jobs/<id>`` through a real gateway, on SQLite, a real Redis, a real RabbitMQ
and SQS (moto's server): a waiting job never runs (a dead letter), a running one is
stopped (a polling ``_predict`` sees ``self.cancelled()``, a streaming one's generator
is closed), whether an endpoint server's consumer or the job runner runs it; a finished
one is 409. ``bis_cancelled_total`` counts them by reason."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def samples(gw, name: str, endpoint: str) -> dict[str, float]:
    """The series of a metric for one endpoint, by their other labels' values."""
    found = {}
    for family in text_string_to_metric_families(gw.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == endpoint:
                rest = tuple(v for k, v in sorted(sample.labels.items()) if k != "endpoint")
                found[rest[0] if len(rest) == 1 else rest] = sample.value
    return found


def depth(gw, endpoint: str) -> float:
    return samples(gw, "bis_queue_depth", endpoint).get((), -1.0)


# Backends that take a cancelled waiting job out of the queue at once (SQLite, Redis);
# on RabbitMQ and SQS (moto's server) the consumer that claims it dead-letters it unrun.
REMOVES = {"sqlite": True, "redis": True, "rabbitmq": False, "sqs": False}


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq", "sqs"], indirect=True)
def test_cancel_a_waiting_job_and_a_running_polling_one(queue_url, gateways, tmp_path, request):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 1}}})
    first, second = tmp_path / "first", tmp_path / "second"
    running = submit(gw, "streamer", POLL_MS=10, MAX_POLLS=100_000, COUNTER=str(first))
    wait_until(lambda: counter(first)[0] == "polled", timeout=30, message="first job runs")
    # The one worker is busy: this one waits in the queue.
    waiting = submit(gw, "streamer", N=3, COUNTER=str(second))
    queued = depth(gw, "streamer")
    resp = delete(gw, waiting)
    assert resp.status_code == 200, resp.text
    assert resp.json()["STATUS"] == "cancelled"
    again = delete(gw, waiting)  # idempotent
    assert again.status_code == 200 and again.json()["STATUS"] == "cancelled", again.text
    if REMOVES[request.node.callspec.params["queue_url"]]:
        assert depth(gw, "streamer") == queued - 1  # out of the queue at once
    else:
        assert depth(gw, "streamer") == queued  # there until a consumer claims it

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
    wait_until(lambda: depth(gw, "streamer") == 0, timeout=30, message="the queue is empty")
    assert samples(gw, "bis_cancelled_total", "streamer") == {"job_waiting": 1.0,
                                                              "job_running": 1.0}


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq", "sqs"], indirect=True)
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


# Through the job runner (an endpoint with VERSIONS has no server of its own to pull its
# jobs): a cancel closes the runner's call to the front, which stops the work as a
# caller that leaves does.
VERSIONED = {"streamer": {"NR_WORKERS": 1, "VERSIONS": {"v1": {}}}}
# How many more polls a cancelled _predict may make: about a second's worth at POLL_MS
# 10 would do (the runner reads the job's record every 0.25 s); generous for a busy box.
MAX_POLLS_AFTER_CANCEL = 1000


def cancel_a_polling_job(gw, signature: str, polling: Path) -> str:
    """Submit a job whose ``_predict`` polls ``self.cancelled()`` (its count in the file
    ``polling``), cancel it once it runs, and check that it stopped polling soon after:
    the job's id."""
    job_id = submit(gw, signature, POLL_MS=10, MAX_POLLS=100_000, COUNTER=str(polling))
    wait_until(lambda: counter(polling)[1] >= 3, timeout=60, message="the job runs")
    assert delete(gw, job_id).status_code == 202
    _word, polls_at_cancel = counter(polling)
    _word, polls = wait_until(lambda: (c := counter(polling))[0] == "stopped" and c, timeout=30,
                              message=f"{signature}'s _predict saw self.cancelled()")
    assert polls - polls_at_cancel <= MAX_POLLS_AFTER_CANCEL
    return job_id


@pytest.mark.parametrize("queue_url", ["sqlite", "redis"], indirect=True)
def test_cancel_reaches_a_job_the_job_runner_runs(queue_url, gateways, tmp_path):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": VERSIONED})
    polling, streaming = tmp_path / "polling", tmp_path / "streaming"
    job_id = cancel_a_polling_job(gw, "streamer", polling)
    rec = wait_status(gw, job_id, "cancelled")
    assert "RESULT" not in rec

    # A streaming endpoint's generator is closed.
    stream_id = submit(gw, "streamer", N=100_000, DELAY_MS=10, COUNTER=str(streaming))
    wait_until(lambda: counter(streaming)[1] >= 3, timeout=30, message="the stream runs")
    assert delete(gw, stream_id).status_code == 202
    word, made = wait_until(lambda: (c := counter(streaming))[0] in ("exit", "closed") and c,
                            timeout=30, message="the generator ended")
    assert word == "exit" and made < 100_000
    wait_status(gw, stream_id, "cancelled")

    with httpx.Client(base_url=gw.base, timeout=30) as client:
        for one in (job_id, stream_id):
            names = [e[1] for e in read_events(client, one)]
            assert names[:2] == ["queued", "running"] and names[-1] == "cancelled", names
    # Counted as jobs stopped while they ran, and as the front's calls whose caller left.
    counted = samples(gw, "bis_cancelled_total", "streamer")
    assert counted["job_running"] == 2 and counted["client_gone"] >= 2, counted


def test_cancel_reaches_a_remote_endpoints_job_on_the_other_gateway(gateways, tmp_path):
    remote = gateways({"CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 1}}})
    here = gateways({"CONFIG_ENDPOINTS": {"rem": {"URLS": [f"http://127.0.0.1:{remote.port}"],
                                                  "REMOTE_SIGNATURE": "streamer"}}})
    here.wait_state("rem", "READY", timeout=30)
    job_id = cancel_a_polling_job(here, "rem", tmp_path / "polling")
    assert "RESULT" not in wait_status(here, job_id, "cancelled")
    assert samples(here, "bis_cancelled_total", "rem")["job_running"] == 1
    # On the remote gateway it was a /run whose caller left.
    assert samples(remote, "bis_cancelled_total", "streamer") == {"client_gone": 1.0}
