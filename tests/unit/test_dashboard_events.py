"""The dashboard's live stream, in-process: cursors, what a reader at a cursor lacks, and
a feed's streams (changes sent once each, coalesced for a slow reader, keepalives, the
age bound, the feed read only while watched)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from basic_inference_server.errors import BadRequest
from basic_inference_server.gateway import dashboard_events
from basic_inference_server.gateway.dashboard_events import (
    Cursor,
    Feed,
    Snapshot,
    frame,
    stream,
)
from basic_inference_server.gateway.job_events import KEEPALIVE_COMMENT
from tests.conftest import until


def state(**servers: str) -> dict[str, Any]:
    return {"SERVERS": {name: {"state": s, "uptime_s": 1.0} for name, s in servers.items()},
            "SYSTEM_ALERTS": []}


def samples(*seconds: float) -> tuple[dict[str, Any], ...]:
    return tuple({"ts": t, "mem_gateway": 1.0} for t in seconds)


def events(*seconds: float) -> tuple[dict[str, Any], ...]:
    return tuple({"ts": t, "kind": "server_restart"} for t in seconds)


def parse(chunk: bytes) -> tuple[str, str, dict[str, Any]]:
    fields = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n"))
    return fields["event"], fields["id"], orjson.loads(fields["data"])


def test_a_cursor_is_written_and_read_back():
    cursor = Cursor("0123456789abcdef", 1733400000123, 17)
    assert str(cursor) == "0123456789abcdef.1733400000123.17"
    assert Cursor.parse(str(cursor)) == cursor
    assert Cursor.parse(str(Cursor())) == Cursor()
    for bad in ("", "7", "x.1.2", "0123456789abcdef.1", "0123456789ABCDEF.1.2", "-.1.2.3"):
        with pytest.raises(BadRequest):
            Cursor.parse(bad)


def test_a_new_reader_gets_everything_and_a_resumed_one_only_what_changed():
    snap = Snapshot(state(echo="READY"), samples(1.0, 2.0), events(1.5))
    news = list(snap.news(Cursor()))
    assert [name for name, _data, _cursor in news] == ["state", "samples", "events"]
    assert news[1][1]["samples"] == list(snap.samples)
    assert news[-1][2] == snap.cursor
    assert not list(snap.news(snap.cursor))

    later = Snapshot(state(echo="READY"), samples(1.0, 2.0, 3.0), events(1.5))
    assert [(n, d) for n, d, _c in later.news(snap.cursor)] == [
        ("samples", {"samples": list(samples(3.0))})]
    stopped = Snapshot(state(echo="STOPPED"), samples(1.0, 2.0), events(1.5, 2.5))
    assert [(n, d) for n, d, _c in stopped.news(snap.cursor)] == [
        ("state", stopped.state), ("events", {"events": list(events(2.5))})]


def test_a_field_that_changes_at_every_read_is_no_change():
    ticking = state(echo="READY")
    ticking["SERVERS"]["echo"]["uptime_s"] = 99.0
    assert Snapshot(ticking).cursor == Snapshot(state(echo="READY")).cursor
    assert Snapshot(state(echo="STOPPED")).cursor != Snapshot(state(echo="READY")).cursor


def test_a_frame_is_an_sse_event_with_its_cursor_as_id():
    chunk = frame("state", Cursor("0123456789abcdef", 1, 2), {"A": 1})
    assert chunk == b'id: 0123456789abcdef.1.2\nevent: state\ndata: {"A":1}\n\n'
    assert parse(chunk) == ("state", "0123456789abcdef.1.2", {"A": 1})


class Manager:
    """What the feed reads: the snapshot set last, and how often it was read."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.reads = 0

    async def read(self, _last: Snapshot | None) -> Snapshot:
        self.reads += 1
        return self.snapshot


def test_each_change_is_sent_once_and_the_feed_stops_when_unwatched():
    async def main() -> None:
        manager = Manager(Snapshot(state(echo="READY"), samples(1.0)))
        feed = Feed(manager.read, poll=0.01)
        events_ = stream(feed, Cursor())
        assert [parse(await anext(events_))[0] for _ in range(2)] == ["state", "samples"]
        reads = manager.reads
        await until(lambda: manager.reads >= reads + 3)  # read on, nothing new: nothing sent
        manager.snapshot = Snapshot(state(echo="STOPPED"), samples(1.0))
        name, cursor, data = parse(await anext(events_))
        assert (name, data["SERVERS"]["echo"]["state"]) == ("state", "STOPPED")
        assert Cursor.parse(cursor) == manager.snapshot.cursor
        await events_.aclose()
        assert feed.watchers == 0
        await until(lambda: feed.snapshot is None)  # its task ended: no more reads

    asyncio.run(main())


def test_a_slow_reader_gets_the_newest_state_not_every_one_in_between():
    async def main() -> None:
        manager = Manager(Snapshot(state(echo="STARTING")))
        feed = Feed(manager.read, poll=0.01)
        events_ = stream(feed, Cursor())
        assert parse(await anext(events_))[0] == "state"
        versions = feed.version
        for name in ("a", "b", "c"):  # three changes while the reader reads nothing
            manager.snapshot = Snapshot(state(echo="READY", **{name: "READY"}))
            await until(lambda v=feed.version: feed.version > v)
        assert feed.version >= versions + 3
        name, _cursor, data = parse(await anext(events_))
        assert (name, sorted(data["SERVERS"])) == ("state", ["c", "echo"])
        await events_.aclose()

    asyncio.run(main())


def test_a_quiet_stream_sends_keepalives_and_ends_at_its_age():
    async def main() -> None:
        manager = Manager(Snapshot(state(echo="READY")))
        feed = Feed(manager.read, poll=0.01)
        chunks = [c async for c in stream(feed, Cursor(), keepalive=0.05, max_age=0.5)]
        assert parse(chunks[0])[0] == "state"
        assert chunks[1:] and set(chunks[1:]) == {KEEPALIVE_COMMENT}
        assert feed.watchers == 0

    asyncio.run(main())


def test_a_reader_that_resumes_at_the_current_cursor_gets_only_keepalives():
    async def main() -> None:
        manager = Manager(Snapshot(state(echo="READY"), samples(1.0), events(1.0)))
        feed = Feed(manager.read, poll=0.01)
        resumed = stream(feed, manager.snapshot.cursor, keepalive=0.05)
        assert await anext(resumed) == KEEPALIVE_COMMENT
        await resumed.aclose()

    asyncio.run(main())


def test_a_failed_read_is_retried_and_the_watchers_get_the_next_one():
    async def main() -> None:
        manager = Manager(Snapshot(state(echo="READY")))
        failures = [RuntimeError("a bad answer")]

        async def read(last: Snapshot | None) -> Snapshot:
            if failures:
                raise failures.pop()
            return await manager.read(last)

        events_ = stream(Feed(read, poll=0.01), Cursor())
        assert parse(await anext(events_))[0] == "state"
        await events_.aclose()

    asyncio.run(main())


class Control:
    """The manager's answers to the feed's commands, and the commands asked."""

    def __init__(self, taken: int, up: bool = True) -> None:
        self.taken = taken  # samples taken so far, one a second from ts 1
        self.up = up
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, _path: str, request: dict[str, Any]) -> dict[str, Any]:
        cmd, args = request["cmd"], request["args"]
        self.asked.append((cmd, args))
        if not self.up:
            raise dashboard_events.ControlUnavailable("refused")
        if cmd == "list_servers":
            return {"status": 200, "body": state(echo="READY")}
        if cmd == "system_status":
            return {"status": 503, "body": {"ERROR": "the first health sample is not taken yet"}}
        window = samples(*range(1, self.taken + 1))[-int(args["samples"]):]
        return {"status": 200, "body": {"samples": list(window), "events": list(events(0.5))}}


def test_the_manager_is_read_for_a_window_then_a_few_samples_a_time(monkeypatch):
    control = Control(taken=300)
    monkeypatch.setattr(dashboard_events, "control_call", control)
    first = dashboard_events.read_manager("ctl", None)
    assert len(first.samples) == dashboard_events.SAMPLES
    assert first.samples[-1]["ts"] == 300 and first.events == events(0.5)
    assert first.state["SERVERS"]["echo"]["state"] == "READY"
    assert first.state["SYSTEM_ERROR"].startswith("the first health sample")

    control.taken, control.asked = 302, []
    second = dashboard_events.read_manager("ctl", first)
    assert [s["ts"] for s in second.samples[-3:]] == [300, 301, 302]
    assert len(second.samples) == dashboard_events.SAMPLES
    assert control.asked[-1] == ("history", {"samples": dashboard_events.FEW_SAMPLES, "audit": 0})

    control.taken, control.asked = 400, []  # more than a few since: the window again
    third = dashboard_events.read_manager("ctl", second)
    assert [a["samples"] for c, a in control.asked if c == "history"] == [
        dashboard_events.FEW_SAMPLES, dashboard_events.SAMPLES]
    assert [s["ts"] for s in third.samples] == list(range(221, 401))

    control.up = False  # the manager away: its error, and the windows kept
    away = dashboard_events.read_manager("ctl", third)
    assert away.state["ERROR"].startswith("the gateway manager is not answering")
    assert away.samples == third.samples and away.events == third.events
