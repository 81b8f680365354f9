"""Streamed answers in the front: the upstream client and the relay, in-process.

A fake endpoint server (asyncio, on a Unix socket) answers with a chunked SSE or NDJSON
stream, one event per HTTP chunk, as the test lets it: slowly, midway closed, or never
ending. The front's :class:`Upstream` reads it; the :class:`Relay` passes it on.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from basic_inference_server import streams
from basic_inference_server.errors import StreamTimeout, UpstreamDropped
from basic_inference_server.gateway import stream_relay
from basic_inference_server.gateway.stream_relay import MAX_CARRY, Deadlines, Relay
from basic_inference_server.gateway.traffic_hooks import TrafficHooks
from basic_inference_server.gateway.upstream import Upstream
from basic_inference_server.gateway.upstream_conn import (
    CLIENT_GONE,
    DONE,
    ERROR,
    READ_AHEAD,
    TIMEOUT,
    StreamEnd,
)
from basic_inference_server.streams import Format
from tests.conftest import until

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
NDJSON_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
DEADLINE = 10.0


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeServer:
    """An endpoint server on a Unix socket. Each request is answered by ``script``:
    ``await script(writer)``; it records connections, requests and closes seen."""

    def __init__(self, path: str, script) -> None:
        self.path = path
        self.script = script
        self.connections = 0
        self.requests = 0
        self.closed = asyncio.Event()  # a client closed a connection (EOF seen)

    async def start(self) -> FakeServer:
        self.server = await asyncio.start_unix_server(self.serve, self.path)
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                watcher = asyncio.ensure_future(self._watch(reader))
                try:
                    await self.script(writer)
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                if self.closed.is_set():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            self.closed.set()
        finally:
            writer.close()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        # While a stream is written, the client sends nothing: EOF means it closed.
        if not await reader.read(1):
            self.closed.set()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def sse(name: str, event_id: int, data: dict) -> bytes:
    return streams.event(Format.SSE, name, event_id, data)


def route(path: str, timeout: float = 5.0, **stream: float) -> dict:
    return {"socket": path, "workers": [], "timeout": timeout, "stream": stream}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_chunks_arrive_before_the_answer_ends_and_a_clean_end_pools_the_connection(tmp_path):
    go_on = None

    async def script(writer):
        writer.write(SSE_HEAD + chunk(sse("chunk", 1, {"n": 1})))
        await go_on.wait()
        go_on.clear()
        writer.write(chunk(sse("done", 2, {"CHUNKS": 1})) + b"0\r\n\r\n")

    async def main():
        nonlocal go_on
        go_on = asyncio.Event()
        server = await FakeServer(str(tmp_path / "s.sock"), script).start()
        up = Upstream()
        rt = route(server.path)
        resp = await up.forward(rt, "ep", b"", b"{}")
        assert resp.status == 200 and resp.body == b"" and resp.stream is not None
        first = await asyncio.wait_for(resp.stream.read(), DEADLINE)
        assert b"event: chunk" in first, "the first event comes while the answer goes on"
        assert up.board.load(server.path) == 1, "the worker counts as busy during the stream"
        go_on.set()
        rest = b""
        while (piece := await resp.stream.read()) is not None:
            rest += piece
        assert b"event: done" in rest
        await resp.stream.aclose()
        assert up.board.load(server.path) == 0
        assert len(up._idle[server.path]) == 1, "a stream read to its end gives its connection back"
        again = await up.forward(rt, "ep", b"", b"{}")
        async for _ in again.stream:
            go_on.set()
        await again.stream.aclose()
        assert server.connections == 1 and server.requests == 2, "the pooled connection is reused"
        up.close_idle(0)
        await server.stop()

    run(main())


def test_aclose_midway_closes_the_upstream_connection(tmp_path):
    async def script(writer):
        writer.write(SSE_HEAD)
        for i in range(1, 1000):
            writer.write(chunk(sse("chunk", i, {"n": i})))
            await writer.drain()
            await asyncio.sleep(0.01)  # paced: the stream is still written when the client leaves

    async def main():
        server = await FakeServer(str(tmp_path / "s.sock"), script).start()
        up = Upstream()
        released = []
        resp = await up.forward(route(server.path), "ep", b"", b"{}")
        resp.stream.hold(released.append)
        assert b"event: chunk" in await resp.stream.read(DEADLINE)
        await resp.stream.aclose()
        await asyncio.wait_for(server.closed.wait(), DEADLINE)
        assert server.path not in up._idle or not up._idle[server.path], "never pooled"
        assert [end.reason for end in released] == ["client_gone"]
        await server.stop()

    run(main())


def test_a_stream_cut_midway_raises_upstream_dropped(tmp_path):
    async def script(writer):
        writer.write(SSE_HEAD + chunk(sse("chunk", 1, {"n": 1})))
        await writer.drain()
        writer.transport.abort()

    async def main():
        server = await FakeServer(str(tmp_path / "s.sock"), script).start()
        up = Upstream()
        resp = await up.forward(route(server.path), "ep", b"", b"{}")
        assert b"event: chunk" in await resp.stream.read(DEADLINE)
        with pytest.raises(UpstreamDropped):
            while await resp.stream.read(DEADLINE) is not None:
                pass
        await resp.stream.aclose()
        await server.stop()

    run(main())


def test_a_whole_answer_is_not_a_stream(tmp_path):
    async def script(writer):
        writer.write(WHOLE)

    async def main():
        server = await FakeServer(str(tmp_path / "s.sock"), script).start()
        up = Upstream()
        resp = await up.forward(route(server.path), "ep", b"", b"{}")
        assert resp.stream is None and resp.body == b"{}"
        up.close_idle(0)
        await server.stop()

    run(main())


def test_an_unread_stream_stops_reading_past_its_read_ahead(tmp_path):
    written = []
    draining = asyncio.Event()  # the producer waits in drain() for the client to read

    async def script(writer):
        writer.write(SSE_HEAD)
        payload = {"x": "y" * 1000}
        high = writer.transport.get_write_buffer_limits()[1]
        for i in range(1, 10_000):
            writer.write(chunk(sse("chunk", i, payload)))
            if writer.transport.get_write_buffer_size() > high:
                draining.set()
            await writer.drain()  # waits once the client stops reading
            draining.clear()
            written.append(i)

    async def main():
        server = await FakeServer(str(tmp_path / "s.sock"), script).start()
        up = Upstream()
        resp = await up.forward(route(server.path), "ep", b"", b"{}")
        await resp.stream.read(DEADLINE)
        # Nothing read: the connection stops reading past its read-ahead, and the
        # producer, its buffers full, waits for it, well before its end.
        await until(lambda: resp.stream.conn.paused and draining.is_set(),
                    message="the producer waits for the unread stream")
        assert len(written) < 9_000, "the producer is paused by the unread stream"
        assert resp.stream.conn.pending_size <= READ_AHEAD + 256 * 1024
        await resp.stream.aclose()
        await server.stop()

    run(main())


# -- the relay ---------------------------------------------------------------------------
class Pieces:
    """A stand-in for UpstreamStream: pieces given by the test (None: the end; an
    exception: raised; "wait": nothing more comes)."""

    def __init__(self, *pieces, route=None) -> None:
        self.pieces = list(pieces)
        self.name = "ep"
        self.route = route or {"timeout": 5}
        self.closed = False
        self.end = None

    async def read(self, timeout=None):
        if not self.pieces or self.pieces[0] == "wait":
            await asyncio.sleep(timeout)
            raise TimeoutError
        piece = self.pieces.pop(0)
        if isinstance(piece, Exception):
            raise piece
        return piece

    async def aclose(self):
        self.closed = True


async def relayed(up, fmt=Format.SSE, deadlines=None, strip=False):
    relay = Relay(up, fmt, deadlines or Deadlines(5, 5, 5), "ep", {"server": "x"},
                  __import__("time").perf_counter(), strip)
    out = [block async for block in relay]
    return out, relay


def events_of(fmt, blocks):
    raw = b"".join(blocks)
    sep = streams.end_of_event(fmt)
    return [streams.parse_event(fmt, part + sep) for part in raw.split(sep)[:-1]]


@pytest.mark.parametrize("fmt", [Format.SSE, Format.NDJSON])
def test_events_split_across_reads_pass_whole_and_usage_is_taken(fmt):
    stream = b"".join(streams.event(fmt, "chunk", i, {"t": f"tok{i}"}) for i in range(1, 4)) \
        + streams.event(fmt, "done", 4, {"CHUNKS": 3, "USAGE": 7})
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]

    async def main():
        up = Pieces(*pieces, None)
        blocks, relay = await relayed(up, fmt, strip=True)
        return up, blocks, relay

    up, blocks, relay = run(main())
    sep = streams.end_of_event(fmt)
    assert all(block.endswith(sep) for block in blocks), "only whole events go out"
    got = events_of(fmt, blocks)
    assert [(n, i) for n, i, _ in got] == [("chunk", 1), ("chunk", 2), ("chunk", 3), ("done", 4)]
    assert got[-1][2] == {"CHUNKS": 3}, "USAGE is taken out with API keys on"
    assert up.closed and up.end.reason == "done" and up.end.units == 7 and up.end.chunks == 3


def test_usage_stays_without_api_keys():
    async def main():
        up = Pieces(sse("done", 1, {"CHUNKS": 0, "USAGE": 2}), None)
        return await relayed(up, strip=False)

    blocks, relay = run(main())
    assert events_of(Format.SSE, blocks)[0][2]["USAGE"] == 2 and relay.end.units == 2


@pytest.mark.parametrize("pieces, which", [
    (["wait"], "STREAM_FIRST_CHUNK_TIMEOUT"),
    ([sse("chunk", 1, {}), "wait"], "STREAM_IDLE_TIMEOUT"),
])
def test_each_timeout_ends_the_stream_with_its_error_event(pieces, which):
    deadlines = Deadlines(0.05, 0.05, 30)

    async def main():
        up = Pieces(*pieces)
        blocks, relay = await relayed(up, deadlines=deadlines)
        return up, blocks

    up, blocks = run(main())
    name, event_id, data = events_of(Format.SSE, blocks)[-1]
    assert name == "error" and event_id == len(pieces)
    assert data["ERROR_TYPE"] == "stream_timeout" and data["TIMEOUT"] == which
    assert data["server"] == "x", "the error event carries the answer's metadata"
    assert up.closed and up.end.reason == "timeout"


def test_the_total_timeout_ends_a_stream_that_keeps_sending():
    async def main():
        class Endless(Pieces):
            async def read(self, timeout=None):
                await asyncio.sleep(min(0.01, timeout))
                self.n = getattr(self, "n", 0) + 1
                return sse("chunk", self.n, {})

        up = Endless()
        return await relayed(up, deadlines=Deadlines(5, 5, 0.2))

    blocks, relay = run(main())
    name, _, data = events_of(Format.SSE, blocks)[-1]
    assert name == "error" and data["TIMEOUT"] == "STREAM_TIMEOUT"
    assert relay.end.chunks == len(blocks) - 1


@pytest.mark.parametrize("pieces, kind, reason", [
    ([sse("chunk", 1, {}), UpstreamDropped("cut")], "upstream_dropped", "error"),
    ([sse("chunk", 1, {}), None], "invalid_stream", "error"),
    ([b"id: 1\nevent: chunk\ndata: " + b"x" * (MAX_CARRY + 1)], "invalid_stream", "error"),
])
def test_a_broken_stream_ends_with_an_error_event(pieces, kind, reason):
    async def main():
        up = Pieces(*pieces)
        return up, *await relayed(up)

    up, blocks, relay = run(main())
    name, _, data = events_of(Format.SSE, blocks)[-1]
    assert name == "error" and data["ERROR_TYPE"] == kind
    assert up.end.reason == reason and up.end.error is not None


def test_the_endpoints_error_event_is_a_failure_for_the_breaker():
    async def main():
        up = Pieces(sse("chunk", 1, {}), sse("error", 2, {"ERROR": "boom",
                                                            "ERROR_TYPE": "endpoint_error"}), None)
        return up, *await relayed(up)

    up, blocks, relay = run(main())
    assert [n for n, _, _ in events_of(Format.SSE, blocks)] == ["chunk", "error"]
    assert up.end.reason == "error" and up.end.status == 500 and up.end.error is None


def test_closing_an_unstarted_relay_closes_the_upstream():
    async def main():
        up = Pieces("wait")
        relay = Relay(up, Format.SSE, Deadlines(5, 5, 5), "ep", {}, 0.0, False)
        await relay.aclose()
        return up

    up = run(main())
    assert up.closed and up.end.reason == "client_gone"


def test_a_route_without_stream_settings_takes_the_defaults():
    assert Deadlines.of({"timeout": 7}) == Deadlines(7, stream_relay.DEFAULT_IDLE,
                                                     stream_relay.DEFAULT_TOTAL)
    assert Deadlines.of({"timeout": 7, "stream": {"first_chunk": None, "idle": 2,
                                                  "total": 9}}) == Deadlines(7, 2, 9)
    assert json.dumps(Deadlines.of({"timeout": 1, "stream": {"first_chunk": 3}}).first) == "3.0"


# -- breakers: a stream is judged when it ends ---------------------------------------------
BREAKER = {"CONSECUTIVE_ERRORS": 2, "OPEN_SECONDS": 5, "HALF_OPEN_SUCCESSES": 1}


def stream_answer(hooks: TrafficHooks, end: StreamEnd) -> None:
    with hooks.guard("gen", BREAKER) as outcome:
        outcome.status = 200  # the head said 200
        judge = hooks.later("gen", BREAKER, outcome)
    assert hooks.allowed("gen"), "nothing is judged before the stream ends"
    judge(end)


@pytest.mark.parametrize("end, fails", [
    (StreamEnd(DONE, 200), False),
    (StreamEnd(ERROR, 500), True),  # the endpoint's error event
    (StreamEnd(ERROR, 503, UpstreamDropped("cut")), True),
    (StreamEnd(TIMEOUT, 504, StreamTimeout("slow")), True),
])
def test_a_stream_counts_for_its_breaker_by_how_it_ended(end, fails):
    hooks = TrafficHooks("/nonexistent")
    stream_answer(hooks, end)
    stream_answer(hooks, end)
    assert hooks.allowed("gen") is not fails
    counts = hooks.recorder.take()["gen"]
    assert (counts.requests, counts.failures) == (2, 2 if fails else 0)


def test_a_stream_its_caller_left_counts_neither_way():
    hooks = TrafficHooks("/nonexistent")
    for _ in range(3):
        stream_answer(hooks, StreamEnd(CLIENT_GONE))
    assert hooks.allowed("gen") and not hooks.recorder.take()
