"""The job events stream of the front, in-process over a fake results store: event ids
and order, the end, keepalive comments while nothing comes, the TTL bound, and the
``Last-Event-ID`` and path parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from basic_inference_server.errors import BadRequest
from basic_inference_server.gateway import job_events
from basic_inference_server.gateway.job_events import KEEPALIVE_COMMENT, events_job_id, last_event_id
from basic_inference_server.streams import Format, parse_event
from basic_inference_server.wire.message import Request

JOB = "a" * 32


class FakeJobs:
    """A job's events, appended by the test; ``status`` is its record's."""

    def __init__(self, status: str | None = "running") -> None:
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.status = status
        self.polls = 0

    def add(self, name: str, **data: Any) -> None:
        self.events.append((len(self.events) + 1, name, data))

    def poll(self, job_id: str, after: int, limit: int):
        self.polls += 1
        return [e for e in self.events if e[0] > after][:limit], self.status


async def off_loop(func: Any, *args: Any) -> Any:
    return func(*args)


async def collect(jobs: FakeJobs, after: int, ttl: float, on_each=None) -> list[bytes]:
    out = []
    async for piece in job_events._stream(jobs, JOB, after, ttl, off_loop):  # type: ignore[arg-type]
        out.append(piece)
        if on_each is not None:
            on_each(len(out))
    return out


def test_events_come_in_order_and_the_stream_ends_after_the_last(monkeypatch):
    monkeypatch.setattr(job_events, "POLL", 0.001)
    jobs = FakeJobs()
    jobs.add("queued")
    jobs.add("running")

    def more(count: int) -> None:  # the job goes on while the watcher reads
        if count == 2:
            jobs.add("progress", step=1)
            jobs.add("done", STATUS="done")
            jobs.status = "done"

    pieces = asyncio.run(collect(jobs, 0, 60, more))
    parsed = [parse_event(Format.SSE, p) for p in pieces]
    assert [(i, n) for n, i, _ in parsed] == [(1, "queued"), (2, "running"), (3, "progress"),
                                              (4, "done")]
    assert parsed[2][2] == {"step": 1}
    # Resumed after 2: the rest once; after the last: nothing.
    assert [parse_event(Format.SSE, p)[1] for p in asyncio.run(collect(jobs, 2, 60))] == [3, 4]
    assert asyncio.run(collect(jobs, 4, 60)) == []


def test_a_quiet_job_gets_keepalives_and_the_watcher_is_let_go_at_the_ttl(monkeypatch):
    monkeypatch.setattr(job_events, "POLL", 0.005)
    monkeypatch.setattr(job_events, "KEEPALIVE", 0.02)
    jobs = FakeJobs()
    pieces = asyncio.run(collect(jobs, 0, ttl=0.3))
    assert pieces and set(pieces) == {KEEPALIVE_COMMENT}
    assert jobs.polls > len(pieces)  # a keepalive only after a quiet time, not each poll


def test_an_expired_job_or_one_over_without_more_events_ends_the_stream(monkeypatch):
    monkeypatch.setattr(job_events, "POLL", 0.001)
    assert asyncio.run(collect(FakeJobs(status=None), 0, 60)) == []
    over = FakeJobs(status="dead")
    # One more look: a cancel writes the record a moment before its end event.
    assert asyncio.run(collect(over, 0, 60)) == [] and over.polls == 2


class CancelledFirst(FakeJobs):
    """A waiting job's cancel: the record says ``cancelled`` one poll before the event."""

    def poll(self, job_id: str, after: int, limit: int):
        found = super().poll(job_id, after, limit)
        if self.polls == 1:
            self.add("cancelled", STATUS="cancelled", RAN=False)
        return found


def test_the_end_event_written_just_after_the_record_is_sent(monkeypatch):
    monkeypatch.setattr(job_events, "POLL", 0.001)
    jobs = CancelledFirst(status="cancelled")
    jobs.add("queued")
    pieces = asyncio.run(collect(jobs, 1, 60))
    assert [parse_event(Format.SSE, p)[0] for p in pieces] == ["cancelled"]


def request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(method="GET", path=f"/jobs/{JOB}/events", query="", headers=headers,
                   body=b"", request_id="r", keep_alive=True, peer=("127.0.0.1", 1))


def test_last_event_id_and_the_events_path():
    assert last_event_id(request([])) == 0
    assert last_event_id(request([(b"Last-Event-ID", b" 42 ")])) == 42
    for bad in (b"-1", b"x", b"1" * 13, b""):
        with pytest.raises(BadRequest):
            last_event_id(request([(b"last-event-id", bad)]))
    assert events_job_id(f"/jobs/{JOB}/events") == JOB
    for path in ("/jobs/short/events", f"/jobs/{JOB}", f"/jobs/{JOB[:-1]}//events",
                 f"/jobs/x/{JOB}/events"):
        assert events_job_id(path) is None
