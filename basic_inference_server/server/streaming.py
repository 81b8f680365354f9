"""The answers of a streaming endpoint: its chunks as events (SSE or NDJSON), or
gathered into one JSON answer. The wire formats are :mod:`basic_inference_server.streams`.

The first chunk is taken in the request's thread before anything is answered: an error
until then is a whole JSON error answer with its status. After it, an error is an
``error`` event (logged once, as every endpoint error) and the stream ends there.

``USAGE``: a chunk whose dict holds ``USAGE`` sets the stream's usage (the last such
chunk wins); the key is taken out of that chunk's event, and the usage is sent once, in
the ``done`` event (in the gathered answer, beside ``CHUNKS``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import orjson

from .. import protocol, streams
from ..errors import ServingError
from ..wire.message import Streamed
from ..worker import FileOutput, FlaskWorker
from .stages import END, Chunks, StageError, encode_base64_fields, pre_process

Meta = Callable[[], dict[str, Any]]


class StreamingCompute:
    """The compute strategy (see :mod:`.compute`) of a ``_predict`` that is a generator
    or async generator function: every request streams, its items the chunks."""

    def __init__(self, worker: FlaskWorker, concurrency: int = 1) -> None:
        self.worker = worker
        # A generative endpoint's streams wait on one decode loop: one thread each.
        self.concurrency = concurrency

    def run(self, inputs: dict[str, Any]) -> Chunks:
        """The chunks of one streamed answer (see the module's docstring)."""
        prep = pre_process(self.worker, inputs)
        try:
            produced = self.worker._predict(prep)
        except ServingError:
            raise
        except Exception as exc:  # a generator function's call runs none of its body
            raise StageError("_predict", exc) from exc
        return Chunks(self.worker, produced)


class ChunkStream:
    """A streaming endpoint's chunks as answer data: dicts (another value ``v`` becomes
    ``{"result": v}``), ``BASE64_OUTPUTS`` encoded, ``USAGE`` taken out."""

    def __init__(self, chunks: Chunks, b64_out: list[str]) -> None:
        self.chunks = chunks
        self.b64_out = b64_out
        self.count = 0
        self.usage: Any = None

    @property
    def gone(self) -> bool:
        """Whether the request's client went away (no chunk is made after)."""
        flag = self.chunks.flag
        return flag is not None and flag.is_set

    def take(self) -> dict[str, Any] | None:
        """The next chunk's data, None at the end; raises :class:`ServingError`."""
        item = self.chunks.take()
        if item is END:
            return None
        if isinstance(item, FileOutput):
            raise StageError("_post_process", TypeError(
                "a stream's chunks are JSON values: return file_response() from a "
                "_predict that does not stream"))
        data = item if isinstance(item, dict) else {"result": item}
        if "USAGE" in data:
            self.usage = data.pop("USAGE")
        encode_base64_fields(data, self.b64_out)
        self.count += 1
        return data

    def ending(self, body: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the stream's usage, if it gave one, and the answer's metadata."""
        if self.usage is not None:
            body["USAGE"] = self.usage
        body.update(meta)
        return body

    def close(self) -> None:
        """Close the stream (its generator's ``finally`` runs)."""
        self.chunks.close()


def gathered(stream: ChunkStream, meta: Meta,
             each: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every chunk in one answer, ``{"CHUNKS": [...], "USAGE"?: ..., <meta>}``; raises
    the stream's :class:`ServingError`. The stream is closed; no chunk is taken once its
    request is cancelled. ``each`` gets each chunk as it comes (a job's events)."""
    try:
        chunks = []
        while not stream.gone and (data := stream.take()) is not None:
            chunks.append(data)
            if each is not None:
                each(data)
    finally:
        stream.close()
    return stream.ending({"CHUNKS": chunks}, meta())


def streamed(stream: ChunkStream, fmt: streams.Format, first: dict[str, Any] | None,
             meta: Meta, failed: Callable[[ServingError], None]) -> Streamed:
    """The :class:`Streamed` answer sending ``first`` and the chunks after it as events of ``fmt``.

    Its ``cancel`` marks the request's client gone (:meth:`FlaskWorker.cancelled`; no chunk
    is asked for after); its ``close`` closes the producer whether or not it started."""
    events = _events(stream, fmt, first, meta, failed)

    def close() -> None:
        try:
            events.close()
        finally:
            stream.close()

    flag = stream.chunks.flag
    return Streamed(events, cancel=flag.set if flag is not None else lambda: None,
                    close=close)


def _events(stream: ChunkStream, fmt: streams.Format, first: dict[str, Any] | None,
            meta: Meta, failed: Callable[[ServingError], None]) -> Generator[bytes, None, None]:
    sent = 0
    try:
        data = first
        while data is not None:
            sent += 1
            yield _event(fmt, streams.CHUNK, sent, data)
            if stream.gone:
                return
            data = stream.take()
        yield _event(fmt, streams.DONE, sent + 1, stream.ending({"CHUNKS": sent}, meta()))
    except ServingError as err:
        failed(err)
        yield _event(fmt, streams.ERROR, sent + 1, {**err.to_dict(), **meta()})
    finally:
        stream.close()


def _event(fmt: streams.Format, name: str, event_id: int, data: dict[str, Any]) -> bytes:
    try:
        return streams.event(fmt, name, event_id, data)
    except TypeError:
        # Values JSON has no type for become lists or strings, as in a whole answer.
        return streams.event(fmt, name, event_id, orjson.loads(protocol.dumps(data)))
