"""The JSON body of a management request, read and decoded once per request.

The views that act on it and the audit trail that records it (:mod:`.audit`) both need
the decoded arguments: the first reader keeps them in ``flask.g``.
"""

from __future__ import annotations

from typing import Any

from flask import g, request

from . import protocol


def json_body(max_size: int | None = None) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty), by :func:`.protocol.parse_body`'s
    rules; kept for :func:`decoded_body`."""
    if "json_body" not in g:
        raw = request.get_data(cache=False)
        g.json_body = protocol.parse_body(raw, max_size) if raw else {}
    body: dict[str, Any] = g.json_body
    return body


def decoded_body() -> dict[str, Any] | None:
    """The body :func:`json_body` decoded in this request, or None if none was."""
    body: dict[str, Any] | None = g.get("json_body")
    return body
