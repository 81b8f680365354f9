"""Streamed answers through the front: an endpoint's events passed on as they come.

The front never holds a whole streamed answer. :class:`Relay` reads the endpoint's
bytes (:class:`.upstream.UpstreamStream`) and passes on every complete event as soon as
it has one (events end with :func:`..streams.end_of_event`); the rest of a read waits
for its end, up to :data:`MAX_CARRY` bytes. It reads the stream's last event: a
``done`` event gives up its ``USAGE`` (charged to the key, and taken out of the event
when API keys are on), an ``error`` event makes the stream a failure for the breaker.

Three deadlines bound a stream (the endpoint's ``STREAM_FIRST_CHUNK_TIMEOUT``,
``STREAM_IDLE_TIMEOUT`` and ``STREAM_TIMEOUT``); past one, and when the endpoint cuts
its stream or sends a malformed one, the caller gets an ``error`` event in the stream's
format as its last event and the endpoint's connection is closed, which stops the work.
A stream in no known format (chunked, another media type) passes through as it comes;
its failures can only be told by cutting it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .. import streams
from ..errors import ServingError, StreamInvalid, StreamTimeout
from ..streams import Format
from ..tenants.usage import take_usage
from ..traffic.compare import with_defaults
from ..traffic.shadow import sampled, wanted
from ..wire.message import Answer
from . import metrics
from .loadboard import LoadBoard
from .upstream_conn import DONE, ERROR, TIMEOUT, StreamEnd, UpstreamStream

# The most bytes of an unfinished event the front carries between reads.
MAX_CARRY = 1024 * 1024
DEFAULT_IDLE = 60.0
DEFAULT_TOTAL = 3600.0
# How each format's final events start (as streams.event writes them).
_FINAL = {
    Format.SSE: (b"\nevent: done\n", b"\nevent: error\n"),
    Format.NDJSON: (b'{"event":"done"', b'{"event":"error"'),
}


@dataclass(frozen=True)
class Deadlines:
    """An endpoint's stream timeouts, in seconds."""

    first: float  # from the request to the first event
    idle: float  # between two reads
    total: float  # from the request to the end

    @classmethod
    def of(cls, route: dict[str, Any]) -> Deadlines:
        """The timeouts of a route: ``stream`` settings, the first chunk's by default
        the endpoint's ``TIMEOUT``."""
        given = route.get("stream") or {}
        first = given.get("first_chunk")
        return cls(float(first if first is not None else route["timeout"]),
                   float(given.get("idle", DEFAULT_IDLE)), float(given.get("total", DEFAULT_TOTAL)))


class Relay(AsyncGenerator[bytes, None]):
    """One streamed answer on its way from an endpoint to the caller: an async generator
    of the caller's chunks (the endpoint's events, then the front's ``error`` event if it
    ends the stream). Closing it, started or not, closes the endpoint's stream."""

    def __init__(self, up: UpstreamStream, fmt: Format | None, deadlines: Deadlines,
                 label: str, meta: dict[str, Any], started: float, strip: bool,
                 units: float = 0.0) -> None:
        self.up = up
        self.fmt = fmt
        self.deadlines = deadlines
        self.label = label
        self.meta = meta
        self.started = started  # time.perf_counter() at the request's arrival
        self.strip = strip  # take USAGE out of the done event
        self.sep = streams.end_of_event(fmt) if fmt is not None else b""
        self.carry = b""
        self.events = 0  # events passed on
        self.last: str | None = None  # the name of the final event passed on
        self.end = StreamEnd(units=units)  # units: what the request used before the stream
        self.over = False
        self.first = True
        now = asyncio.get_running_loop().time()
        begun = now - (time.perf_counter() - started)
        self.total_end = begun + deadlines.total
        self.step_end = begun + deadlines.first
        metrics.stream_started(label)

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self.asend(None)  # (no extra coroutine a chunk, as the mixin's would be)

    async def asend(self, value: None) -> bytes:
        """The next chunk for the caller; StopAsyncIteration after the last."""
        try:
            while not self.over:
                loop = asyncio.get_running_loop()
                block, more = await self._step(min(self.step_end, self.total_end) - loop.time(),
                                               self.step_end < self.total_end)
                self.step_end = loop.time() + self.deadlines.idle
                if not more:
                    self.over = True
                    await self.aclose()  # the connection goes back before the last event
                if block:
                    if self.first and self.end.error is None:
                        metrics.stream_first_chunk(self.label, time.perf_counter() - self.started)
                    self.first = False
                    return block
        except BaseException:
            await self.aclose()
            raise
        raise StopAsyncIteration

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        """Close the stream, then raise what was thrown in."""
        await self.aclose()
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        raise val

    async def aclose(self) -> None:
        """Close the endpoint's stream (unless read to its end, its connection is closed)
        and release what the request held; once."""
        if self.up.closed:
            return
        self.over = True
        self.end.chunks = max(0, self.events - (self.last is not None))
        self.up.end = self.end
        metrics.stream_ended(self.label, self.end.reason, self.end.chunks)
        await self.up.aclose()

    async def _step(self, wait: float, stepwise: bool) -> tuple[bytes, bool]:
        """One read's events to pass on, and whether the stream goes on."""
        try:
            if wait <= 0:  # (a read that finds bytes waiting would not time out)
                raise TimeoutError
            piece = await self.up.read(wait)
            if piece is None:
                return self._ended(), False
            return self._complete(piece), True
        except TimeoutError:
            return self._fail(self._timeout(stepwise), TIMEOUT), False
        except ServingError as err:  # cut by the endpoint, or invalid
            return self._fail(err, ERROR), False

    def _complete(self, piece: bytes) -> bytes:
        """The complete events of what came so far; the rest is carried."""
        if self.fmt is None:
            self.events += 1
            return piece
        data = self.carry + piece if self.carry else piece
        cut = data.rfind(self.sep)
        if cut < 0:
            block, self.carry = b"", data
        else:
            cut += len(self.sep)
            block, self.carry = data[:cut], data[cut:]
            self.events += block.count(self.sep)
        if len(self.carry) > MAX_CARRY:
            raise StreamInvalid(f"endpoint {self.up.name} sent an event of more than "
                                f"{MAX_CARRY} bytes", SIGNATURE=self.up.name, LIMIT=MAX_CARRY)
        done, error = _FINAL[self.fmt]
        if done in block or error in block:
            block = self._final(block)
        return block

    def _final(self, block: bytes) -> bytes:
        """A block that holds the final event: note which, and take its USAGE."""
        assert self.fmt is not None
        parts = block.split(self.sep)[:-1]
        for i, raw in enumerate(parts):
            name, event_id, data = streams.parse_event(self.fmt, raw + self.sep)
            if name == streams.CHUNK:
                continue
            self.last = name
            if name == streams.ERROR:
                self.end.status = 500
            elif "USAGE" in data:
                # Read for the charge; without API keys (a job runner's call) it stays.
                copy = dict(data)
                self.end.units += take_usage(copy)
                if self.strip:
                    parts[i] = streams.event(self.fmt, name, event_id, copy)[:-len(self.sep)]
        return self.sep.join(parts) + self.sep

    def _ended(self) -> bytes:
        """The endpoint's stream ended: as it should, after its final event, or not."""
        if self.fmt is None:
            self.end.reason = DONE
            return b""
        if self.last is None or self.carry:
            return self._fail(StreamInvalid(
                f"endpoint {self.up.name} ended its stream without a done or error event",
                SIGNATURE=self.up.name), ERROR)
        self.end.reason = DONE if self.last == streams.DONE else ERROR
        return b""

    def _timeout(self, stepwise: bool) -> StreamTimeout:
        if not stepwise:
            name, seconds = "STREAM_TIMEOUT", self.deadlines.total
            what = "did not end its stream"
        elif self.events == 0 and not self.carry:
            name, seconds = "STREAM_FIRST_CHUNK_TIMEOUT", self.deadlines.first
            what = "sent no first chunk"
        else:
            name, seconds = "STREAM_IDLE_TIMEOUT", self.deadlines.idle
            what = "sent nothing more"
        return StreamTimeout(f"endpoint {self.up.name} {what} within its {name} of {seconds:g} s",
                             SIGNATURE=self.up.name, TIMEOUT=name, SECONDS=seconds)

    def _fail(self, err: ServingError, reason: str) -> bytes:
        """End the stream for ``err``: the caller's last event (a stream in no known
        format is cut: ``err`` is raised)."""
        self.end.reason, self.end.error, self.end.status = reason, err, err.status
        if self.fmt is None:
            raise err
        self.events += 1
        self.last = streams.ERROR
        return streams.event(self.fmt, streams.ERROR, self.events, {**err.to_dict(), **self.meta})


def stream_answer(answer: Answer, up: UpstreamStream, label: str, meta: dict[str, Any],
                  started: float, strip: bool, units: float = 0.0) -> Answer:
    """``answer`` (the head the front made) with the endpoint's stream as its body
    (``units``: used before the stream, charged with its own at its end)."""
    content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), None)
    answer.headers += streams.STREAM_HEADERS
    answer.stream = Relay(up, streams.format_of(content_type), Deadlines.of(up.route), label,
                          meta, started, strip, units)
    return answer


def in_flight_until_end(board: LoadBoard, column: str) -> Callable[[StreamEnd], None]:
    """What a stream holds of its endpoint's ``MAX_IN_FLIGHT`` and ``bis_in_flight``."""

    def release(_end: StreamEnd) -> None:
        board.add(column, -1)

    return release


def skip_mirror(endpoint: str, shadow: dict[str, Any], version: str | None,
                request_id: str) -> None:
    """A streamed answer is not mirrored to the endpoint's shadow: counted ``skipped``
    when the shadow would have had it."""
    if wanted(shadow, version) and sampled(request_id, float(with_defaults(shadow)["FRACTION"])):
        metrics.skip_shadow(endpoint, shadow["VERSION"])
