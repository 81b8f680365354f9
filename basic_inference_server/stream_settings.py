"""The per-endpoint settings of streamed answers: the front's three stream timeouts
(gateway/stream_relay.py acts on them)."""

from __future__ import annotations

from .setting import Setting, at_least


def _seconds_or_null(v: float | None) -> str | None:
    return None if v is None else at_least(0.01)(v)


STREAM_SETTINGS: list[Setting] = [
    Setting("STREAM_FIRST_CHUNK_TIMEOUT", (int, float, type(None)), None,
            "Seconds from a streamed request to its first chunk; past it the stream ends with "
            "an error event (stream_timeout). null: TIMEOUT. The answer's head still comes "
            "within TIMEOUT.", _seconds_or_null),
    Setting("STREAM_IDLE_TIMEOUT", (int, float), 60,
            "Seconds a stream may send nothing between two chunks; past it the stream ends "
            "with an error event (stream_timeout).", at_least(0.01)),
    Setting("STREAM_TIMEOUT", (int, float), 3600,
            "Seconds a stream may last in all; past it the stream ends with an error event "
            "(stream_timeout).", at_least(0.01)),
]
