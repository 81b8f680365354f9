"""The producer both systems stream in bench/bench_stream.py: the same code in each.

A request asks for ``N`` chunks ``{"t": "00000000"}`` (the index, 8 digits: 16 bytes of
JSON), one each ``DELAY_MS`` after the first, each padded with ``SIZE`` bytes in ``p``
when asked. With ``TAG`` (a short name) and ``BENCH_STREAM_COUNTER`` (a folder) in the
environment, the producer appends one byte to ``<folder>/<TAG>`` per chunk made
(``.``), then ``x`` when it was closed early (its client left) or ``e`` when it ran to
its end: the benchmark's server-side count of what a stream cost.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

COUNTER_ENV = "BENCH_STREAM_COUNTER"
MAX_N = 1_000_000
MAX_DELAY_MS = 1000
MAX_SIZE = 4096
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _bounded(body: dict[str, Any], key: str, default: int, top: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{key} must be an integer from 0 to {top}")
    return value


def params(body: dict[str, Any]) -> tuple[int, float, int, str | None]:
    """``N``, the delay in seconds, ``SIZE`` and ``TAG`` of a request, checked."""
    tag = body.get("TAG")
    if tag is not None and (not isinstance(tag, str) or not TAG_RE.fullmatch(tag)):
        raise ValueError("TAG must be 1 to 64 letters, digits, _ or -")
    return (_bounded(body, "N", 1, MAX_N), _bounded(body, "DELAY_MS", 0, MAX_DELAY_MS) / 1000,
            _bounded(body, "SIZE", 0, MAX_SIZE), tag)


def _counter(tag: str | None) -> int | None:
    folder = os.environ.get(COUNTER_ENV)
    if not tag or not folder:
        return None
    return os.open(os.path.join(folder, tag), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def ticks(n: int, delay: float, size: int, tag: str | None) -> Iterator[dict[str, str]]:
    """The chunks of one stream, counted in the tag's file when it has one."""
    fd, pad, end = _counter(tag), "x" * size, b"e"
    try:
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            chunk = {"t": f"{i:08d}", "p": pad} if size else {"t": f"{i:08d}"}
            if fd is not None:
                os.write(fd, b".")
            yield chunk
    except GeneratorExit:
        end = b"x"
        raise
    finally:
        if fd is not None:
            os.write(fd, end)
            os.close(fd)
