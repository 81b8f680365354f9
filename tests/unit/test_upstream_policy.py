"""The front's upstream client: how failures are classified and which ones are resent.

The policy is checked as a table, then through real Unix-socket servers in-process
that drop, reset or refuse, and count what reached them.
"""

from __future__ import annotations

import asyncio

import httptools
import pytest

from basic_inference_server.errors import Unavailable, UpstreamDropped, UpstreamTimeout
from basic_inference_server.gateway.upstream import (
    AttemptFailed,
    Failure,
    Resend,
    Upstream,
    _Closed,
    _Reset,
    classify,
    resend,
)
from tests.conftest import until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


@pytest.mark.parametrize(("failure", "last", "crash", "expected"), [
    (Failure.STALE, False, 0, Resend.SAME), (Failure.STALE, True, 0, Resend.SAME),
    (Failure.UNREACHABLE, False, 0, Resend.NEXT), (Failure.UNREACHABLE, True, 0, Resend.NO),
    (Failure.DROPPED, False, 0, Resend.NO), (Failure.DROPPED, False, 1, Resend.NEXT),
    (Failure.DROPPED, True, 1, Resend.NO),
    (Failure.TIMEOUT, False, 1, Resend.NO), (Failure.INVALID, False, 1, Resend.NO)])
def test_resend_policy(failure, last, crash, expected):
    assert resend(failure, last=last, crash_resends=crash) is expected


@pytest.mark.parametrize(("exc", "reused", "failure", "error"), [
    (_Reset(), True, Failure.STALE, Unavailable),
    (_Reset(), False, Failure.UNREACHABLE, Unavailable),
    (ConnectionRefusedError(111, "refused"), False, Failure.UNREACHABLE, Unavailable),
    (_Closed(), True, Failure.DROPPED, UpstreamDropped),
    (TimeoutError(), False, Failure.TIMEOUT, UpstreamTimeout),
    (httptools.HttpParserError("bad"), False, Failure.INVALID, Unavailable)])
def test_classify(exc, reused, failure, error):
    failed = classify(exc, reused, "e", 5)
    assert isinstance(failed, AttemptFailed) and failed.failure is failure
    err = failed.error("e")
    assert type(err) is error and err.details["SIGNATURE"] == "e"


class Server:
    """A Unix-socket server that answers, drops after reading, or is absent."""

    def __init__(self, path: str, mode: str) -> None:
        self.path, self.mode, self.requests = path, mode, 0
        self.connections = 0  # open now

    async def start(self) -> None:
        if self.mode != "absent":
            self.server = await asyncio.start_unix_server(self.serve, self.path)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                if self.mode == "drop":
                    writer.transport.abort()
                    return
                writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed its kept-alive connection
        finally:
            writer.close()
            self.connections -= 1

    async def stop(self) -> None:
        if self.mode != "absent":
            self.server.close()
            await self.server.wait_closed()


async def run(tmp_path, modes: list[str], retry_on_crash: bool) -> tuple[list[Server], object]:
    tmp_path.mkdir(exist_ok=True)
    servers = [Server(str(tmp_path / f"w{i}.sock"), m) for i, m in enumerate(modes)]
    for s in servers:
        await s.start()
    route = {"workers": [s.path for s in servers[:-1]], "socket": servers[-1].path,
             "timeout": 5, "retry_on_crash": retry_on_crash}
    upstream = Upstream()
    upstream._by_load = lambda sockets: list(sockets)  # type: ignore[method-assign]
    try:
        result: object = await upstream.forward(route, "e", b"", b"{}")
    except Exception as exc:  # noqa: BLE001 - the test looks at which error it was
        result = exc
    upstream.close_idle(0)
    await until(lambda: not any(s.connections for s in servers), message="the servers saw the closes")
    for s in servers:
        await s.stop()
    return servers, result


def test_an_unreachable_worker_hands_the_request_to_the_next(tmp_path):
    servers, resp = asyncio.run(run(tmp_path, ["absent", "ok", "ok"], retry_on_crash=False))
    assert resp.status == 200 and [s.requests for s in servers] == [0, 1, 0]


def test_a_dropped_request_is_resent_once_only_with_retry_on_crash(tmp_path):
    servers, err = asyncio.run(run(tmp_path, ["drop", "ok", "ok"], retry_on_crash=False))
    assert isinstance(err, UpstreamDropped) and [s.requests for s in servers] == [1, 0, 0]
    servers, resp = asyncio.run(run(tmp_path / "b", ["drop", "ok", "ok"], retry_on_crash=True))
    assert resp.status == 200 and [s.requests for s in servers] == [1, 1, 0]
    servers, err = asyncio.run(run(tmp_path / "c", ["drop", "drop", "ok"], retry_on_crash=True))
    assert isinstance(err, UpstreamDropped) and [s.requests for s in servers] == [1, 1, 0]


def test_nothing_reachable_is_503(tmp_path):
    servers, err = asyncio.run(run(tmp_path, ["absent", "absent"], retry_on_crash=True))
    assert isinstance(err, Unavailable) and not isinstance(err, UpstreamDropped)
    assert "not accepting connections" in str(err)


def test_a_connection_closed_before_the_request_is_written_never_runs_it(tmp_path):
    """Its worker died between the connect (or the pool) and the write: the request is
    handed to the next worker instead of failing with the transport's error."""

    async def main() -> tuple[list[Server], object]:
        servers = [Server(str(tmp_path / f"w{i}.sock"), "ok") for i in range(2)]
        for s in servers:
            await s.start()
        upstream = Upstream()
        upstream._by_load = lambda sockets: list(sockets)  # type: ignore[method-assign]
        route = {"workers": [servers[0].path], "socket": servers[1].path, "timeout": 5}
        first = await upstream.forward(route, "e", b"", b"{}")
        pooled = upstream._idle[servers[0].path][-1]
        pooled.transport.close()  # closed; the pool has not heard of it yet
        pooled.open = True
        second = await upstream.forward(route, "e", b"", b"{}")
        upstream.close_idle(0)
        for s in servers:
            await s.stop()
        return servers, (first, second)

    servers, (first, second) = asyncio.run(main())
    assert first.status == second.status == 200
    assert sum(s.requests for s in servers) == 2
