"""The wire formats of streamed answers, shared by the endpoint servers (which write
them), the front (which passes them through) and the client (which reads them).

A streamed answer is a sequence of events, each with an ``id`` (1, 2, ...), a name and
a JSON object:

- ``chunk``: one item the endpoint's ``_predict`` yielded, after ``_post_process``;
- ``done``: the last event of a stream that ended well: ``CHUNKS`` (how many were sent),
  the endpoint's ``USAGE`` if it gave one, and the metadata fields of a ``/run`` answer;
- ``error``: the last event of a stream that failed, before or after its first chunk:
  ``ERROR`` and ``ERROR_TYPE`` as in every error answer.

Two formats carry them; each event is written as one piece (one HTTP chunk):

- SSE (``text/event-stream``): ``id: 3\\nevent: chunk\\ndata: {...}\\n\\n``;
- NDJSON (``application/x-ndjson``): ``{"event": "chunk", "id": 3, "data": {...}}\\n``.

A caller asks for SSE with ``Accept: text/event-stream`` or ``"STREAM": true`` in the
body, for NDJSON with ``Accept: application/x-ndjson``. A caller that asks for neither
gets the chunks gathered into one JSON answer: ``{"CHUNKS": [...], <done's fields>}``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import orjson

SSE_TYPE = "text/event-stream"
NDJSON_TYPE = "application/x-ndjson"
CHUNK, DONE, ERROR = "chunk", "done", "error"
# Headers of every streamed answer: no cache, and no buffering by a proxy (nginx).
STREAM_HEADERS = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


class Format(Enum):
    """How a caller wants a streaming endpoint's answer."""

    SSE = SSE_TYPE
    NDJSON = NDJSON_TYPE
    GATHERED = "application/json"

    @property
    def content_type(self) -> str:
        """The Content-Type of an answer in this format."""
        return f"{self.value}; charset=utf-8" if self is Format.SSE else self.value


def wanted(accept: str | None, stream_field: Any = None) -> Format:
    """The format a caller asked for, from its ``Accept`` header and ``STREAM`` field."""
    if accept:
        if SSE_TYPE in accept:
            return Format.SSE
        if NDJSON_TYPE in accept:
            return Format.NDJSON
    return Format.SSE if stream_field is True else Format.GATHERED


def event(fmt: Format, name: str, event_id: int, data: dict[str, Any]) -> bytes:
    """One event, written whole: the bytes of one HTTP chunk."""
    if fmt is Format.NDJSON:
        return orjson.dumps({"event": name, "id": event_id, "data": data}) + b"\n"
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name.encode(), orjson.dumps(data))


def end_of_event(fmt: Format) -> bytes:
    """What ends one event: how a reader splits a stream's bytes into events."""
    return b"\n" if fmt is Format.NDJSON else b"\n\n"


def parse_event(fmt: Format, raw: bytes) -> tuple[str, int, dict[str, Any]]:
    """The name, id and data of one whole event written by :func:`event`."""
    if fmt is Format.NDJSON:
        obj = orjson.loads(raw)
        return str(obj["event"]), int(obj["id"]), obj["data"]
    fields: dict[bytes, bytes] = {}
    for line in raw.strip(b"\n").split(b"\n"):
        key, _, value = line.partition(b":")
        fields[key] = value[1:] if value.startswith(b" ") else value
    return fields[b"event"].decode(), int(fields[b"id"]), orjson.loads(fields[b"data"])


def format_of(content_type: str | None) -> Format | None:
    """The stream format of an answer's ``Content-Type``; None for a whole answer."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == SSE_TYPE:
        return Format.SSE
    if media == NDJSON_TYPE:
        return Format.NDJSON
    return None
