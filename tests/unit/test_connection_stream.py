"""Streamed answers on HttpConnection's fake transport: chunked framing, HTTP/1.0, the
producer paused while the client's reads lag, and a client that goes away closing the
producer; and a blocking producer's chunks made off the loop (``threaded_chunks``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import httptools

from basic_inference_server.wire.connection import HIGH_WATER, Answer, Request
from basic_inference_server.wire.message import Streamed, threaded_chunks
from tests.conftest import until
from tests.unit.test_connection import Server, connect, run, settle

GET = b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n"


class Producer:
    """An async stream of ``count`` chunks of ``size`` bytes; records how far it got."""

    def __init__(self, count: int, size: int = 10) -> None:
        self.count, self.size = count, size
        self.made = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                self.made += 1
                yield (b"%d:" % i).ljust(self.size, b".")
                await asyncio.sleep(0)
        finally:
            self.closed = True


class StreamServer(Server):
    def __init__(self, producer: Producer) -> None:
        super().__init__()
        self.producer = producer

    async def handle(self, request: Request) -> Answer:
        self.handled.append(request)
        return Answer(200, [("Content-Type", "application/x-ndjson")],
                      stream=self.producer.chunks())


def parse(raw: bytes) -> tuple[int, list[bytes], bool]:
    """Status, body pieces and whether the message completed, by a real HTTP parser."""
    got: dict[str, object] = {"body": [], "done": False}

    class Sink:
        def on_body(self, body: bytes) -> None:
            got["body"].append(body)  # type: ignore[union-attr]

        def on_message_complete(self) -> None:
            got["done"] = True

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(raw)
    return parser.get_status_code(), got["body"], bool(got["done"])  # type: ignore[return-value]


def test_a_stream_is_written_chunked_and_ends_with_the_last_chunk() -> None:
    async def main() -> None:
        producer = Producer(5)
        conn, transport = connect(StreamServer(producer))
        conn.data_received(GET)
        await settle()
        out = bytes(transport.out)
        assert b"Transfer-Encoding: chunked\r\n" in out and b"Content-Length" not in out
        status, body, done = parse(out)
        assert status == 200 and done
        assert b"".join(body) == b"".join((b"%d:" % i).ljust(10, b".") for i in range(5))
        assert producer.closed and not transport.closed  # kept alive for the next request

    run(main())


def test_an_http10_client_gets_the_stream_raw_and_the_connection_closed() -> None:
    async def main() -> None:
        producer = Producer(3)
        conn, transport = connect(StreamServer(producer))
        conn.data_received(b"GET /s HTTP/1.0\r\n\r\n")
        await settle()
        out = bytes(transport.out)
        assert b"Transfer-Encoding" not in out and b"Connection: close" in out
        assert out.endswith(b"2:" + b"." * 8) and transport.closed

    run(main())


def test_a_slow_reader_pauses_the_producer() -> None:
    async def main() -> None:
        producer = Producer(1000, size=4096)
        conn, transport = connect(StreamServer(producer))
        conn.data_received(GET)
        await settle()
        # Written up to the high-water mark, then no further chunk is asked for.
        paused_at = producer.made
        assert paused_at < 1000 and transport.unsent <= HIGH_WATER + 4096 + 64
        await settle()
        assert producer.made == paused_at
        while not producer.closed:
            transport.take()
            await settle()
        assert producer.made == 1000 and parse(bytes(transport.out))[2]

    run(main())


def test_a_client_that_goes_away_closes_the_producer_within_one_chunk() -> None:
    async def main() -> None:
        producer = Producer(1000, size=4096)
        conn, transport = connect(StreamServer(producer))
        conn.data_received(GET)
        await settle()
        made = producer.made
        conn.connection_lost(None)
        await settle()
        assert producer.closed and producer.made == made

    run(main())


def test_a_producer_that_fails_midway_cuts_the_stream_unended() -> None:
    class Failing(Producer):
        async def chunks(self) -> AsyncIterator[bytes]:
            yield b"first"
            raise RuntimeError("boom")

    async def main() -> None:
        conn, transport = connect(StreamServer(Failing(0)))
        conn.data_received(GET)
        await settle()
        status, body, done = parse(bytes(transport.out))
        assert status == 200 and body == [b"first"] and not done and transport.aborted

    run(main())


def test_threaded_chunks_makes_each_chunk_off_the_loop_and_closes_after_the_one_in_making() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    steps: list[str] = []
    cancelled = threading.Event()
    making = threading.Event()
    release = threading.Event()

    def produce() -> Iterator[bytes]:
        try:
            for i in range(100):
                threads.add(threading.get_ident())
                if i == 2:
                    making.set()
                    release.wait(5)  # the third chunk is in the making when the client leaves
                steps.append(f"made {i}")
                yield b"%d" % i
        finally:
            steps.append("closed")

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            stream = threaded_chunks(Streamed(produce(), cancel=cancelled.set), pool)
            assert [await stream.__anext__(), await stream.__anext__()] == [b"0", b"1"]
            task = asyncio.ensure_future(stream.__anext__())
            await until(making.is_set, message="the third chunk is in the making")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert cancelled.is_set()  # told at once, while the chunk is still in the making
            release.set()
        # The pool is shut down: the close ran after the chunk in the making.
        assert steps == ["made 0", "made 1", "made 2", "closed"]
        assert loop_thread not in threads

    run(main())
