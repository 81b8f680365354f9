"""The client's job event reader without a gateway: it resumes after a dropped
connection with the last id read (each event once), ends after the last event, and
gives up after RECONNECTS drops in a row."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from basic_inference_server.client import ConnectionLost, InternalError
from basic_inference_server.client.flows import Answer
from basic_inference_server.client.job_events import RECONNECTS, AsyncJobEvents, JobEvents
from basic_inference_server.streams import Format, event

NAMES = ["queued", "running", "progress", "progress", "done"]


class Cut(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The events after ``after``, cut (a transport error) after ``keep`` of them."""

    def __init__(self, after: int, keep: int | None) -> None:
        self.pieces = [event(Format.SSE, name, i, {"n": i})
                       for i, name in enumerate(NAMES, start=1) if i > after][:keep]
        self.cut = keep is not None

    def __iter__(self):
        yield from self.pieces
        if self.cut:
            raise httpx.ReadError("connection cut")

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece
        if self.cut:
            raise httpx.ReadError("connection cut")


def opener(keeps: list[int | None], asked: list[int]):
    def open_answer(after: int) -> Answer:
        asked.append(after)
        stream = Cut(after, keeps[min(len(asked), len(keeps)) - 1])
        resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
        return Answer(200, resp, resp.headers)
    return open_answer


def test_a_dropped_watch_resumes_after_the_last_event_read():
    asked: list[int] = []
    events = list(JobEvents(opener([2, 1, None], asked)))
    assert [(e.id, e.event) for e in events] == list(enumerate(NAMES, start=1))
    assert asked == [0, 2, 3] and events[-1].last and events[1].data == {"n": 2}


def test_the_async_reader_does_the_same():
    asked: list[int] = []

    async def read():
        async def open_answer(after: int) -> Answer:
            return opener([1, 3, None], asked)(after)
        return [e.id async for e in AsyncJobEvents(open_answer, after=0)]

    assert asyncio.run(read()) == [1, 2, 3, 4, 5] and asked == [0, 1, 4]


def test_a_watch_gives_up_after_drops_without_events_and_refuses_bad_events():
    asked: list[int] = []
    with pytest.raises(ConnectionLost):
        list(JobEvents(opener([0], asked)))
    assert len(asked) == RECONNECTS + 1

    def bad(after: int) -> Answer:
        resp = httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"id: x\nevent: chunk\ndata: {}\n\n")
        return Answer(200, resp, resp.headers)

    with pytest.raises(InternalError):
        list(JobEvents(bad))
