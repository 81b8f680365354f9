"""``GET /jobs/<id>/events`` through a real gateway: a job's events in order with their
ids (parsed with httpx-sse), resumed with ``Last-Event-ID`` by 200 watchers that drop
and come back without missing or repeating one, and refused to other tenants' keys."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from basic_inference_server.client import AsyncClient, Client, Conflict, NotFound
from tests.conftest import assert_error
from tests.jobs.jobs_client import submit, wait_finished
from tests.jobs.sse import ENDS, delete, read_events
from tests.tenants.conftest import make_key, ready

STEPS = 4
# queued, running, one progress per step, done
EVENTS_PER_JOB = 3 + STEPS


@pytest.mark.parametrize("queue_url", ["sqlite", "redis"], indirect=True)
def test_a_jobs_events_in_order_with_ids(queue_url, gateways):
    gw = gateways({"QUEUE": queue_url, "CONFIG_ENDPOINTS": {"progress": {}, "streamer": {}}})
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        job_id = submit(gw, "progress", STEPS=STEPS, DELAY_MS=20)
        events = read_events(client, job_id)  # from the start: it ends after the last
        assert [e[0] for e in events] == list(range(1, EVENTS_PER_JOB + 1))
        assert [e[1] for e in events] == ["queued", "running", *["progress"] * STEPS, "done"]
        assert [e[2]["step"] for e in events if e[1] == "progress"] == list(range(1, STEPS + 1))
        assert events[-1][2]["RESULT"]["steps"] == STEPS
        # Over: a watcher gets the rest at once, or nothing after the last.
        assert read_events(client, job_id, last=5) == events[5:]
        assert read_events(client, job_id, last=EVENTS_PER_JOB) == []

        stream = submit(gw, "streamer", N=3)
        wait_finished(gw, stream)
        names = [(e[0], e[1]) for e in read_events(client, stream)]
        assert names == [(1, "queued"), (2, "running"), (3, "chunk"), (4, "chunk"),
                         (5, "chunk"), (6, "done")]

        failed = submit(gw, "streamer", BAD=True)
        assert [e[1] for e in read_events(client, failed)][-1] == "failed"

        resp = client.get(f"/jobs/{'0' * 32}/events")
        assert resp.status_code == 404 and resp.headers["content-type"].startswith(
            "application/json"), resp.text
        resp = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "x1"})
        assert resp.status_code == 400 and "Last-Event-ID" in resp.json()["ERROR"]
        resp = client.post(f"/jobs/{job_id}/events")
        assert resp.status_code == 405, resp.text


def test_200_watchers_that_drop_and_resume_miss_and_repeat_nothing(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"progress": {"NR_WORKERS": 2}}})
    reconnects = []

    def submit_and_watch(n: int) -> list[int]:
        """Submit a job and watch it live, dropping after 1 to 3 events each time."""
        job_id = submit(gw, "progress", STEPS=STEPS, DELAY_MS=5)
        rng = random.Random(n)
        seen: list[int] = []
        over = False
        with httpx.Client(base_url=gw.base, timeout=60) as client:
            while not over:
                got = read_events(client, job_id, last=seen[-1] if seen else None,
                                  stop_after=rng.randint(1, 3))
                assert got, f"job {job_id}: a stream ended before the job's last event"
                reconnects.append(job_id)
                seen += [event_id for event_id, _name, _data in got]
                over = any(name in ENDS for _id, name, _data in got)
        return seen

    with ThreadPoolExecutor(16) as pool:
        watched = list(pool.map(submit_and_watch, range(200)))
    every = set(range(1, EVENTS_PER_JOB + 1))
    missed = sum(len(every - set(seen)) for seen in watched)
    repeated = sum(len(seen) - len(set(seen)) for seen in watched)
    assert (len(watched), missed, repeated) == (200, 0, 0)
    assert all(seen == sorted(every) for seen in watched)
    assert len(reconnects) >= 2 * len(watched)  # every watcher dropped and came back


def test_events_and_cancel_need_the_jobs_tenant_key(gateways):
    gw = ready(gateways({"API_KEYS": True, "CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 1}}}))
    acme, other = make_key(gw)["KEY"], make_key(gw, TENANT="globex")["KEY"]
    resp = httpx.post(gw.url("/jobs"), json={"SIGNATURE": "streamer", "N": 2},
                      headers={"Authorization": f"Bearer {acme}"}, timeout=30)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["JOB_ID"]
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        for key, status in ((None, 401), (other, 404), ("not-a-key", 401)):
            hdrs = {"Authorization": f"Bearer {key}"} if key else {}
            assert_error(client.get(f"/jobs/{job_id}/events", headers=hdrs), status)
            assert_error(delete(gw, job_id, key), status)
        assert [e[1] for e in read_events(client, job_id, key=acme)][-1] == "done"
    assert delete(gw, job_id, acme).status_code == 409


def test_the_client_watches_and_cancels_jobs(gateways, tmp_path):
    gw = gateways({"CONFIG_ENDPOINTS": {"progress": {}, "streamer": {"NR_WORKERS": 1}}})
    with Client(gw.base, admin_token=gw.token) as bis:
        job_id = bis.submit("progress", {"STEPS": STEPS})
        with bis.job_events(job_id) as watch:
            events = list(watch)
        assert [e.id for e in events] == list(range(1, EVENTS_PER_JOB + 1))
        assert events[-1].last and events[-1].event == "done"
        assert [e.id for e in bis.job_events(job_id, last_event_id=5)] == [6, 7]

        running = bis.submit("streamer", {"N": 100_000, "DELAY_MS": 10})
        asked = None
        for event in bis.job_events(running):
            if event.event == "chunk" and asked is None:
                asked = bis.cancel(running)
            last = event
        assert asked["STATUS"] == "running" and asked["CANCEL_REQUESTED"]
        assert last.event == "cancelled" and last.data["RAN"] is True
        assert bis.status(running)["STATUS"] == "cancelled"
        with pytest.raises(Conflict):
            bis.cancel(job_id)
        with pytest.raises(NotFound):
            list(bis.job_events("0" * 32))

    async def watch_async() -> list[str]:
        async with AsyncClient(gw.base) as abis:
            return [e.event async for e in abis.job_events(job_id)]

    assert asyncio.run(watch_async())[-1] == "done"
