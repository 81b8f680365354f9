"""HttpConnection on a fake transport: body buffers, the body budget, pipelining, write
flow control, the end of a connection and canonical paths, with no socket and no clock."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from basic_inference_server.wire.connection import (
    HIGH_WATER,
    PARSE_SLICE,
    PIPELINE_DEPTH,
    SMALL_BODY,
    Answer,
    BodyBudget,
    HttpConnection,
    Limits,
    Request,
)
from basic_inference_server.wire.message import canonical
from tests.conftest import until

STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class Transport(asyncio.Transport):
    """Records what is written; ``unsent`` grows with writes until the client ``take``s."""

    def __init__(self, proto: HttpConnection) -> None:
        super().__init__()
        self.proto = proto
        self.out = bytearray()
        self.unsent = 0
        self.high = 0
        self.write_paused = False
        self.reading = True
        self.closed = self.aborted = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high or 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.out += data
        self.unsent += len(data)
        if self.unsent > self.high and not self.write_paused:
            self.write_paused = True
            self.proto.pause_writing()

    def take(self) -> None:
        """The client reads all that was sent."""
        self.unsent = 0
        if self.write_paused:
            self.write_paused = False
            self.proto.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def statuses(self) -> list[int]:
        return [int(s) for s in STATUS.findall(bytes(self.out))]


class Server:
    """What HttpConnection asks of its worker; ``handle`` answers ``answer(request)``,
    waiting on ``gate`` first when one is set."""

    def __init__(self, budget: int = 0, send_timeout: float = 0.0, **limits: Any) -> None:
        self.limits = Limits(body_budget=budget, send_timeout=send_timeout, **limits)
        self.bodies = BodyBudget(self.limits.body_budget)
        self.alive = True
        self.handled: list[Request] = []
        self.gate: asyncio.Event | None = None
        self.answer_size = 10

    def connection_opened(self, conn: HttpConnection) -> bool:
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        pass

    def meta(self) -> dict[str, Any]:
        return {}

    async def handle(self, request: Request) -> Answer:
        if self.gate is not None:
            await self.gate.wait()
        self.handled.append(request)
        return Answer(200, [], b"x" * self.answer_size)


def connect(server: Server) -> tuple[HttpConnection, Transport]:
    conn = HttpConnection(server)
    transport = Transport(conn)
    conn.connection_made(transport)
    return conn, transport


async def settle() -> None:
    """Let the connection's tasks run until they wait on something."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def head(path: str = "/run", length: int | None = None, extra: str = "") -> bytes:
    cl = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{cl}{extra}\r\n".encode()


def test_headers_alone_allocate_nothing_and_the_buffer_doubles_up_to_content_length() -> None:
    async def main() -> None:
        server = Server()
        conn, _t = connect(server)
        size = 3 * 1024 * 1024 + 123
        conn.data_received(head(length=size))
        assert len(conn.body) == 0 and server.bodies.held == 0
        sent = 0
        piece = b"7" * 10_000
        while sent < size:
            chunk = piece[:size - sent]
            conn.data_received(chunk)
            sent += len(chunk)
            if sent < size:
                assert len(conn.body) <= max(SMALL_BODY, 2 * sent), (sent, len(conn.body))
                assert len(conn.body) <= size
                assert server.bodies.held == max(0, len(conn.body) - SMALL_BODY)
        await settle()
        assert len(server.handled) == 1
        body = server.handled[0].body
        assert len(body) == size and body == b"7" * size
        assert server.bodies.held == 0  # a complete body is no longer "being received"

    run(main())


def test_a_body_in_one_piece_is_kept_as_it_came_and_a_chunked_one_is_trimmed() -> None:
    async def main() -> None:
        server = Server()
        conn, _t = connect(server)
        conn.data_received(head(length=5) + b"hello")
        await settle()
        assert server.handled[-1].body == b"hello"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"a" * 70_000, b"b" * 3])
        conn.data_received(head(extra="Transfer-Encoding: chunked\r\n") + chunks + b"0\r\n\r\n")
        await settle()
        body = server.handled[-1].body
        assert body == b"a" * 70_000 + b"bbb" and len(body) == 70_003
        assert server.bodies.held == 0

    run(main())


def test_bodies_past_the_process_budget_get_503_and_the_budget_is_given_back() -> None:
    async def main() -> None:
        server = Server(budget=SMALL_BODY * 4)
        first, t1 = connect(server)
        second, t2 = connect(server)
        first.data_received(head(length=SMALL_BODY * 8) + b"a" * (SMALL_BODY * 3))
        assert server.bodies.held == len(first.body) - SMALL_BODY == SMALL_BODY * 2
        second.data_received(head(length=SMALL_BODY * 8) + b"b" * (SMALL_BODY * 4))
        assert t2.statuses() == [503] and t2.closed
        assert b'"ERROR_TYPE":"overloaded"' in t2.out.replace(b" ", b"")
        assert b"Retry-After: 1" in t2.out
        # A small body still fits: the budget counts only what passes SMALL_BODY.
        third, t3 = connect(server)
        third.data_received(head(length=SMALL_BODY) + b"c" * SMALL_BODY)
        await settle()
        assert t3.statuses() == [200]
        first.connection_lost(None)
        assert server.bodies.held == 0

    run(main())


def test_one_read_of_thousands_of_requests_queues_a_bounded_number_then_answers_all() -> None:
    async def main() -> None:
        server = Server()
        server.gate = asyncio.Event()
        conn, transport = connect(server)
        count = 3000
        conn.data_received(b"GET /a HTTP/1.1\r\n\r\n" * count)
        await settle()
        most = PIPELINE_DEPTH + PARSE_SLICE // 16
        assert len(conn.queue) <= most and conn.held is not None
        assert not transport.reading
        server.gate.set()
        for _ in range(count):
            if len(server.handled) == count:
                break
            await asyncio.sleep(0)
            transport.take()
        await settle()
        assert len(server.handled) == count
        assert transport.statuses() == [200] * count
        assert transport.reading and not transport.closed

    run(main())


def test_no_answer_is_made_while_the_client_leaves_the_last_ones_unread() -> None:
    async def main() -> None:
        server = Server(send_timeout=0.2)
        server.answer_size = HIGH_WATER  # each answer fills the transport's buffer
        conn, transport = connect(server)
        conn.data_received(b"GET /a HTTP/1.1\r\n\r\n" * 10)
        await settle()
        assert len(server.handled) == 1 and conn.write_paused
        transport.take()
        await settle()
        assert len(server.handled) == 2
        # A client that takes nothing more for send_timeout is dropped.
        await until(lambda: transport.aborted, message="the client is dropped")
        assert len(server.handled) == 2

    run(main())


def test_bytes_after_the_last_request_do_not_drop_the_answers_due() -> None:
    async def main() -> None:
        server = Server()
        conn, transport = connect(server)
        conn.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n"
                           b"GET /c HTTP/1.1\r\n\r\n")
        conn.data_received(b"more bytes")
        await settle()
        assert [r.path for r in server.handled] == ["/a", "/b"]
        assert transport.statuses() == [200, 200] and transport.closed

        server = Server()
        conn, transport = connect(server)
        conn.data_received(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        await settle()
        assert transport.statuses() == [200] and transport.closed

    run(main())


def test_a_refusal_follows_the_answers_due_before_it() -> None:
    async def main() -> None:
        server = Server()
        server.gate = asyncio.Event()
        conn, transport = connect(server)
        conn.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nNOT HTTP\r\n\r\n")
        await settle()
        assert transport.statuses() == []
        server.gate.set()
        await settle()
        assert transport.statuses() == [200, 200, 400] and transport.closed

    run(main())


@pytest.mark.parametrize("path, ok", [
    ("/run", True), ("/jobs/0123abcd", True), ("/usage/tenants.csv", True),
    ("/dashboard/static/vendor/chart.umd.min.js", True), ("/.well-known/x", True), ("/", True),
    ("/jobs%2F0123", False), ("/%6Aobs/0123", False), ("//run", False), ("/jobs//x", False),
    ("/jobs/./x", False), ("/jobs/../run", False), ("/run/.", False), ("/..", False),
])
def test_canonical_paths(path: str, ok: bool) -> None:
    assert canonical(path) is ok


def test_a_path_that_is_not_canonical_gets_404_without_reaching_the_handler() -> None:
    async def main() -> None:
        server = Server()
        conn, transport = connect(server)
        conn.data_received(b"GET /jobs%2Fabc HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n\r\n")
        await settle()
        assert transport.statuses() == [404, 200]
        assert [r.path for r in server.handled] == ["/ok"]
        assert b"not_found" in transport.out

    run(main())


def test_raw_header_lines_are_written_as_they_came_before_the_answers_headers() -> None:
    class Relaying(Server):
        async def handle(self, request: Request) -> Answer:
            return Answer(201, [("X-Endpoint-Version", "v2")], b"{}",
                          raw_headers=b"Content-Type: application/json\r\nRetry-After: 3\r\n")

    async def main() -> bytes:
        conn, transport = connect(Relaying())
        conn.data_received(head(length=2) + b"{}")
        await settle()
        return bytes(transport.out)

    out = run(main())
    head_block, _, body = out.partition(b"\r\n\r\n")
    lines = head_block.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 201 Created" and body == b"{}"
    assert lines[1:4] == [b"Content-Type: application/json", b"Retry-After: 3",
                          b"X-Endpoint-Version: v2"]
    assert b"Content-Length: 2" in lines
