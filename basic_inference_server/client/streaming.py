"""Streamed ``/run`` answers read as iterators of chunks: :class:`Stream` and :class:`AsyncStream`.

The gateway sends a streaming endpoint's answer as Server-Sent Events
(:mod:`basic_inference_server.streams` is the wire format): ``chunk`` events, then one
``done`` (its data: ``CHUNKS``, ``USAGE`` when the endpoint gave one, the metadata
fields) or one ``error``. A stream yields each chunk's data; after ``done`` it ends and
keeps that data in :attr:`~ChunkStream.done`; an ``error`` event raises the typed error
of its ``ERROR_TYPE``, as an error answer would. Closing the stream (leaving its
``with`` block, ``close()``, or the loop with the iterator dropped) closes the HTTP
response, which is what stops the work on the server.

A refusal before the stream (a 4xx or 5xx JSON answer) raises like :meth:`~.api.BaseClient.run`,
after the same retries. An endpoint that does not stream answers one JSON body: it is
read as a stream of one chunk (or of its ``CHUNKS`` when it holds them gathered).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent

from .. import streams
from .errors import BisError, ConnectionLost, InternalError, error_for
from .flows import Answer

Chunk = dict[str, Any]
EVENTS = (streams.CHUNK, streams.DONE, streams.ERROR)


def transport_error(exc: httpx.TransportError) -> BisError:
    """The error of a connection that failed once the stream had begun: it may have run."""
    return ConnectionLost(f"stream cut: {type(exc).__name__}: {exc}")


class ChunkStream:
    """What one stream has read; the parts common to the sync and async readers."""

    def __init__(self) -> None:
        #: The ``done`` event's data (``CHUNKS``, ``USAGE``, metadata); None until it came.
        self.done: dict[str, Any] | None = None
        #: The answer's ``X-Request-ID``, once the answer began.
        self.request_id: str | None = None
        #: The HTTP status of the answer, once it began.
        self.status: int | None = None
        self.chunks = 0
        self._closed = False

    @property
    def usage(self) -> Any:
        """The ``USAGE`` the endpoint reported in ``done`` (None without one)."""
        return (self.done or {}).get("USAGE")

    def _began(self, answer: Answer) -> None:
        self.status = answer.status
        self.request_id = answer.headers.get("x-request-id")

    def _whole(self, body: dict[str, Any]) -> list[Chunk]:
        """The chunks of an answer that came whole: its ``CHUNKS`` list, or itself."""
        gathered = body.get("CHUNKS")
        if isinstance(gathered, list) and all(isinstance(c, dict) for c in gathered):
            chunks: list[Chunk] = gathered
            self.done = {**body, "CHUNKS": len(chunks)}
        else:
            chunks = [body]
            self.done = {"CHUNKS": 1}
        self.chunks = len(chunks)
        return chunks

    def _take(self, sse: ServerSentEvent) -> Chunk | None:
        """The data of a ``chunk`` event; None at ``done``; raises the ``error`` event's error."""
        try:
            data = orjson.loads(sse.data)
        except orjson.JSONDecodeError as exc:
            raise InternalError(f"malformed {sse.event} event (id {sse.id}): {exc}",
                                status=self.status) from exc
        if not isinstance(data, dict):
            raise InternalError(f"{sse.event} event (id {sse.id}) is not a JSON object",
                                status=self.status)
        if sse.event == streams.DONE:
            self.done = data
            return None
        if sse.event == streams.ERROR:
            raise error_for(None, data, None)
        self.chunks += 1
        return data

    def _cut(self) -> BisError:
        return ConnectionLost(f"the stream ended after {self.chunks} chunks without its "
                              "done event")


class Stream(ChunkStream):
    """A blocking stream of chunks: ``for chunk in stream``; ``with`` closes it.

    Made by :meth:`Client.stream <.api.BaseClient.stream>`; the request is sent when the
    iteration starts.
    """

    def __init__(self, open_answer: Callable[[], Answer]) -> None:
        super().__init__()
        self._open = open_answer
        self._chunks: Generator[Chunk, None, None] | None = None

    def _read(self) -> Generator[Chunk, None, None]:
        answer = self._open()
        self._began(answer)
        if isinstance(answer.body, dict):
            yield from self._whole(answer.body)
            return
        response: httpx.Response = answer.body
        try:
            for sse in EventSource(response).iter_sse():
                if sse.event not in EVENTS:  # skipped: a newer server's event
                    continue
                chunk = self._take(sse)
                if chunk is None:
                    return
                yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            response.close()
        raise self._cut()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk:
        if self._closed:
            raise StopIteration
        if self._chunks is None:
            self._chunks = self._read()
        return next(self._chunks)

    def close(self) -> None:
        """Close the response (the server stops the work); the iteration ends."""
        self._closed = True
        if self._chunks is not None:
            self._chunks.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(ChunkStream):
    """An asyncio stream of chunks: ``async for chunk in stream``; ``async with`` closes it.

    Made by :meth:`AsyncClient.stream <.api.BaseClient.stream>`; the request is sent when
    the iteration starts.
    """

    def __init__(self, open_answer: Callable[[], Awaitable[Answer]]) -> None:
        super().__init__()
        self._open = open_answer
        self._chunks: AsyncGenerator[Chunk, None] | None = None

    async def _read(self) -> AsyncGenerator[Chunk, None]:
        answer = await self._open()
        self._began(answer)
        if isinstance(answer.body, dict):
            for whole in self._whole(answer.body):
                yield whole
            return
        response: httpx.Response = answer.body
        try:
            async for sse in EventSource(response).aiter_sse():
                if sse.event not in EVENTS:  # skipped: a newer server's event
                    continue
                chunk = self._take(sse)
                if chunk is None:
                    return
                yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        finally:
            await response.aclose()
        raise self._cut()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._closed:
            raise StopAsyncIteration
        if self._chunks is None:
            self._chunks = self._read()
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Close the response (the server stops the work); the iteration ends."""
        self._closed = True
        if self._chunks is not None:
            await self._chunks.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

