"""The stream wire formats: what a caller asks for, events written and read back."""

from __future__ import annotations

import pytest

from basic_inference_server.streams import (
    Format,
    end_of_event,
    event,
    format_of,
    parse_event,
    wanted,
)


@pytest.mark.parametrize(("accept", "field", "fmt"), [
    ("text/event-stream", None, Format.SSE),
    ("application/x-ndjson", None, Format.NDJSON),
    ("application/json, text/event-stream;q=0.9", None, Format.SSE),
    (None, True, Format.SSE),
    ("*/*", None, Format.GATHERED),
    (None, "yes", Format.GATHERED),  # only the JSON true asks for a stream
    (None, None, Format.GATHERED),
])
def test_the_format_a_caller_asked_for(accept, field, fmt) -> None:
    assert wanted(accept, field) is fmt


@pytest.mark.parametrize("fmt", [Format.SSE, Format.NDJSON])
def test_an_event_reads_back_and_ends_with_its_separator(fmt) -> None:
    data = {"text": "a\nb\n\nc", "n": [1, 2], "é": "ü"}
    raw = event(fmt, "chunk", 7, data)
    assert raw.endswith(end_of_event(fmt))
    assert raw.count(end_of_event(fmt)) == 1  # newlines in the data are escaped by JSON
    assert parse_event(fmt, raw) == ("chunk", 7, data)
    assert format_of(fmt.content_type) is fmt


def test_sse_events_parse_with_a_maintained_sse_reader() -> None:
    import httpx
    from httpx_sse import EventSource

    raw = event(Format.SSE, "chunk", 1, {"t": "a"}) + event(Format.SSE, "done", 2, {"CHUNKS": 1})
    resp = httpx.Response(200, headers={"content-type": Format.SSE.content_type}, content=raw)
    seen = [(e.event, e.id, e.json()) for e in EventSource(resp).iter_sse()]
    assert seen == [("chunk", "1", {"t": "a"}), ("done", "2", {"CHUNKS": 1})]


def test_a_whole_answer_is_not_a_stream() -> None:
    assert format_of("application/json") is None and format_of(None) is None
    assert Format.GATHERED.content_type == "application/json"
