"""The client's streams over httpx.MockTransport: events as the servers write them
(streams.event), the done data, error events as typed errors, refusals before the
stream, and an early close that closes the response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from basic_inference_server import streams
from basic_inference_server.client import (
    AsyncClient,
    BisError,
    Client,
    ConnectionLost,
    InternalError,
    InvalidStream,
    NotFound,
    RetryPolicy,
    StreamTimeout,
    Timeout,
    Unavailable,
    UpstreamDropped,
    cli,
)
from basic_inference_server.streams import CHUNK, DONE, ERROR, Format

SSE = {"content-type": Format.SSE.content_type, "x-request-id": "req-7"}
DONE_DATA = {"CHUNKS": 3, "USAGE": 3, "ver": "1", "signature": "gen"}


def sse(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    """The pieces a server writes: one per event, ids from 1."""
    return [streams.event(Format.SSE, name, n, data) for n, (name, data) in
            enumerate(events, start=1)]


def tokens(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [(CHUNK, {"TOKEN": f"t{i}"}) for i in range(n)]


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent piece by piece, which counts what was read and its close."""

    def __init__(self, pieces: list[bytes], fail_after: int | None = None) -> None:
        self.pieces = pieces
        self.fail_after = fail_after
        self.sent = 0
        self.closed = False

    def _next(self) -> Iterator[bytes]:
        for piece in self.pieces:
            if self.sent == self.fail_after:
                raise httpx.ReadError("connection reset")
            self.sent += 1
            yield piece

    def __iter__(self) -> Iterator[bytes]:
        yield from self._next()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._next():
            yield piece

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class Gateway:
    """A fake gateway: answers each request with the next of ``answers``; keeps requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)


def stream_answer(body: Pieces, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, headers=headers or SSE, stream=body)


def client(gateway: Gateway, **options: Any) -> Client:
    bis = Client("http://gw", **options)
    bis._http = httpx.Client(transport=httpx.MockTransport(gateway))
    return bis


def aclient(gateway: Gateway, **options: Any) -> AsyncClient:
    bis = AsyncClient("http://gw", **options)
    bis._http = httpx.AsyncClient(transport=httpx.MockTransport(gateway))
    return bis


def test_chunks_come_in_order_and_done_keeps_the_last_events_data():
    body = Pieces(sse(*tokens(3), (DONE, DONE_DATA)))
    gw = Gateway(stream_answer(body))
    with client(gw, api_key="key-1") as bis:
        stream = bis.stream("gen", {"PROMPT": "hi"}, MAX=3)
        assert gw.requests == []  # sent when the iteration starts
        assert list(stream) == [{"TOKEN": "t0"}, {"TOKEN": "t1"}, {"TOKEN": "t2"}]
    assert stream.done == DONE_DATA and stream.usage == 3
    assert (stream.chunks, stream.status, stream.request_id) == (3, 200, "req-7")
    assert body.closed
    (request,) = gw.requests
    assert request.headers["accept"] == streams.SSE_TYPE
    assert request.headers["x-api-key"] == "key-1"
    assert (request.method, request.url.path) == ("POST", "/run")
    assert json.loads(request.content) == {"PROMPT": "hi", "MAX": 3, "SIGNATURE": "gen"}


def test_events_split_anywhere_parse_the_same():
    whole = b"".join(sse(*tokens(5), (DONE, {"CHUNKS": 5})))
    body = Pieces([whole[i:i + 7] for i in range(0, len(whole), 7)])
    with client(Gateway(stream_answer(body))) as bis:
        stream = bis.stream("gen")
        assert [c["TOKEN"] for c in stream] == [f"t{i}" for i in range(5)]
    assert stream.done == {"CHUNKS": 5}


def test_an_empty_chunk_is_a_chunk_and_unknown_events_are_skipped():
    pieces = sse((CHUNK, {}), ("progress", {"P": 1}), (CHUNK, {"A": 1}), (DONE, {"CHUNKS": 2}))
    with client(Gateway(stream_answer(Pieces(pieces)))) as bis:
        assert list(bis.stream("gen")) == [{}, {"A": 1}]


def test_an_error_event_raises_its_typed_error_after_the_chunks_before_it():
    error = {"ERROR": "no chunk for 2 s", "ERROR_TYPE": "stream_timeout", "ver": "1"}
    body = Pieces(sse(*tokens(2), (ERROR, error)))
    got: list[dict[str, Any]] = []
    with client(Gateway(stream_answer(body))) as bis, pytest.raises(StreamTimeout) as caught:
        for chunk in bis.stream("gen"):
            got.append(chunk)
    assert got == [{"TOKEN": "t0"}, {"TOKEN": "t1"}]
    assert caught.value.message == "no chunk for 2 s" and caught.value.body == error
    assert caught.value.status is None and isinstance(caught.value, Timeout)
    assert body.closed


@pytest.mark.parametrize(("kind", "cls"), [("endpoint_error", InternalError),
                                          ("invalid_stream", InvalidStream),
                                          ("upstream_dropped", UpstreamDropped)])
def test_an_error_event_maps_as_an_error_answer_does(kind, cls):
    body = Pieces(sse((ERROR, {"ERROR": "boom", "ERROR_TYPE": kind})))
    with client(Gateway(stream_answer(body))) as bis, pytest.raises(cls) as caught:
        list(bis.stream("gen"))
    assert caught.value.kind == (kind if cls is not InternalError else "internal_error")


def test_a_stream_cut_before_done_is_a_lost_connection():
    with client(Gateway(stream_answer(Pieces(sse(*tokens(2)))))) as bis:
        stream = bis.stream("gen")
        with pytest.raises(ConnectionLost, match="after 2 chunks"):
            list(stream)
    assert stream.done is None


def test_a_transport_failure_midway_is_a_lost_connection_not_resent():
    body = Pieces(sse(*tokens(4), (DONE, {"CHUNKS": 4})), fail_after=2)
    gw = Gateway(stream_answer(body))
    with client(gw) as bis, pytest.raises(ConnectionLost, match="ReadError"):
        list(bis.stream("gen"))
    assert len(gw.requests) == 1


def test_a_malformed_event_is_an_error_not_a_chunk():
    body = Pieces([b"id: 1\nevent: chunk\ndata: {not json\n\n"])
    with client(Gateway(stream_answer(body))) as bis, pytest.raises(InternalError, match="malformed"):
        list(bis.stream("gen"))


def test_a_refusal_before_the_stream_is_retried_then_the_stream_is_read():
    refused = httpx.Response(503, headers={"retry-after": "0"},
                             json={"ERROR": "starting", "ERROR_TYPE": "unavailable"})
    body = Pieces(sse(*tokens(1), (DONE, {"CHUNKS": 1})))
    gw = Gateway(refused, stream_answer(body))
    with client(gw) as bis:
        assert list(bis.stream("gen")) == [{"TOKEN": "t0"}]
    assert len(gw.requests) == 2


def test_an_error_answer_before_the_stream_raises_as_run_does():
    gw = Gateway(httpx.Response(404, json={"ERROR": "no such endpoint", "ERROR_TYPE": "not_found"}))
    with client(gw) as bis, pytest.raises(NotFound) as caught:
        list(bis.stream("nope"))
    assert caught.value.status == 404 and len(gw.requests) == 1
    gw = Gateway(httpx.Response(503, json={"ERROR": "down", "ERROR_TYPE": "unavailable"}))
    with client(gw, retry=RetryPolicy(attempts=1)) as bis, pytest.raises(Unavailable):
        list(bis.stream("gen"))


def test_a_whole_json_answer_reads_as_its_chunks():
    gathered = {"CHUNKS": [{"T": "a"}, {"T": "b"}], "USAGE": 2, "ver": "1"}
    plain = {"RESULT": 42, "ver": "1"}
    gw = Gateway(httpx.Response(200, json=gathered), httpx.Response(200, json=plain))
    with client(gw) as bis:
        first = bis.stream("gen")
        assert list(first) == [{"T": "a"}, {"T": "b"}]
        assert first.done == {"CHUNKS": 2, "USAGE": 2, "ver": "1"}
        second = bis.stream("echo")
        assert list(second) == [plain] and second.done == {"CHUNKS": 1}


def test_leaving_the_loop_early_closes_the_response_and_reads_no_further():
    body = Pieces(sse(*tokens(100), (DONE, {"CHUNKS": 100})))
    with client(Gateway(stream_answer(body))) as bis:
        with bis.stream("gen") as stream:
            for chunk in stream:
                if chunk["TOKEN"] == "t1":
                    break
            assert not body.closed
        assert body.closed and body.sent == 2 and stream.done is None
        assert list(stream) == []  # a closed stream ends


def test_a_stream_is_never_a_job():
    gw = Gateway()
    with client(gw) as bis, pytest.raises(ValueError, match="submit"):
        bis.stream("gen", {"ASYNC": True})
    assert gw.requests == []


def test_closing_a_stream_never_started_sends_nothing():
    gw = Gateway()
    with client(gw) as bis:
        stream = bis.stream("gen")
        stream.close()
        assert list(stream) == [] and gw.requests == []


def test_the_async_stream_reads_the_same_events():
    body = Pieces(sse(*tokens(3), (DONE, DONE_DATA)))
    gw = Gateway(stream_answer(body))

    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with aclient(gw, admin_token="tok") as bis:
            stream = bis.stream("gen", PROMPT="hi")
            return [chunk async for chunk in stream], stream

    chunks, stream = asyncio.run(main())
    assert [c["TOKEN"] for c in chunks] == ["t0", "t1", "t2"]
    assert stream.done == DONE_DATA and stream.request_id == "req-7" and body.closed
    assert gw.requests[0].headers["authorization"] == "Bearer tok"
    assert gw.requests[0].headers["accept"] == streams.SSE_TYPE


def test_the_async_stream_raises_error_events_and_closes_early():
    error = {"ERROR": "worker died", "ERROR_TYPE": "upstream_dropped"}
    failing = Pieces(sse(*tokens(1), (ERROR, error)))
    long = Pieces(sse(*tokens(50), (DONE, {"CHUNKS": 50})))
    gw = Gateway(stream_answer(failing), stream_answer(long))

    async def main() -> None:
        async with aclient(gw) as bis:
            with pytest.raises(BisError) as caught:
                async for _ in bis.stream("gen"):
                    pass
            assert caught.value.kind == "upstream_dropped"
            async with bis.stream("gen") as stream:
                async for chunk in stream:
                    assert chunk == {"TOKEN": "t0"}
                    break
            assert long.closed and long.sent == 1
            assert [c async for c in stream] == []

    asyncio.run(main())
    assert failing.closed


def run_cli(monkeypatch: pytest.MonkeyPatch, gw: Gateway, *argv: str) -> int:
    """``bis`` in this process, its client talking to ``gw``."""
    monkeypatch.setattr(cli, "Client", lambda url, **options: client(gw, **options))
    for name in ("BIS_URL", "BIS_ADMIN_TOKEN", "BIS_ADMIN_TOKEN_FILE", "BIS_API_KEY",
                 "BIS_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BIS_API_KEY", "key-2")
    return cli.main(list(argv))


def test_bis_run_stream_prints_one_json_line_per_chunk_then_done_on_stderr(monkeypatch, capsys):
    gw = Gateway(stream_answer(Pieces(sse(*tokens(3), (DONE, DONE_DATA)))))
    assert run_cli(monkeypatch, gw, "run", "--stream", "gen", "MAX=3") == 0
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"TOKEN": "t0"}, {"TOKEN": "t1"}, {"TOKEN": "t2"}]
    assert json.loads(err) == DONE_DATA
    assert json.loads(gw.requests[0].content) == {"MAX": 3, "SIGNATURE": "gen"}
    assert gw.requests[0].headers["x-api-key"] == "key-2"


def test_bis_run_stream_exits_1_with_the_error_event(monkeypatch, capsys):
    error = {"ERROR": "idle for 1 s", "ERROR_TYPE": "timeout"}
    gw = Gateway(stream_answer(Pieces(sse(*tokens(1), (ERROR, error)))))
    assert run_cli(monkeypatch, gw, "run", "--stream", "gen") == cli.EXIT_ERROR
    out, err = capsys.readouterr()
    assert out.splitlines() == ['{"TOKEN": "t0"}']
    assert json.loads(err) == {"ERROR": "idle for 1 s", "ERROR_TYPE": "timeout", "STATUS": None,
                               "ATTEMPTS": 1}


def test_bis_run_stream_and_async_do_not_go_together(monkeypatch, capsys):
    with pytest.raises(SystemExit) as caught:
        run_cli(monkeypatch, Gateway(), "run", "--stream", "--async", "gen")
    assert caught.value.code == cli.EXIT_USAGE
    assert "not allowed with" in capsys.readouterr().err
