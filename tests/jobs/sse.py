"""Server-sent events read with httpx-sse: a job's ``GET /jobs/<id>/events``, and a
``/run`` stream that its caller leaves."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from httpx_sse import connect_sse

from tests.conftest import Gateway

ENDS = ("done", "failed", "cancelled")


def read_events(client: httpx.Client, job_id: str, *, last: int | None = None,
                key: str | None = None, stop_after: int | None = None
                ) -> list[tuple[int, str, dict[str, Any]]]:
    """The job's events (after ``last``): (id, name, data), until the stream ends or
    ``stop_after`` of them came (then the connection is dropped)."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    if last is not None:
        hdrs["Last-Event-ID"] = str(last)
    with connect_sse(client, "GET", f"/jobs/{job_id}/events", headers=hdrs) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            out.append((int(sse.id), sse.event, orjson.loads(sse.data)))
            if stop_after is not None and len(out) >= stop_after:
                break
    return out


def delete(gw: Gateway, job_id: str, key: str | None = None) -> httpx.Response:
    """``DELETE /jobs/<id>``, with ``key`` (else no Authorization header)."""
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.delete(gw.url(f"/jobs/{job_id}"), headers=hdrs, timeout=30)


def leave_after_first_chunk(gw: Gateway, **fields: Any) -> None:
    """``POST /run`` of ``fields`` as a stream: read its first event (a chunk), then
    close the connection, as a caller that leaves."""
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", gw.url("/run"), json=fields) as source:
        assert next(source.iter_sse()).event == "chunk"
