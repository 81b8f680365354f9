"""``Server-Timing`` of an endpoint server's ``/run`` answers (``SERVER_TIMING``).

Each stage is timed by its own clock in the request's thread:

- ``queue``: from the request's last byte to its thread taking it;
- ``decode``: the body's JSON;
- ``pre``, ``predict``, ``post``: the worker's hooks. With batching, ``_predict_batch``
  runs on the batch thread for several requests at once: the request's ``batch`` is its
  wait for its batch and that shared call (its compute less its own hooks);
- ``encode``: the answer's JSON;
- ``server``: the whole, from the request's last byte to the answer's head.

A stream's answer goes out with its head: its stages are those until its first chunk.
The hooks are timed by wrapping them on the worker once, at start, when the setting (or
tracing) is on: off, nothing is wrapped and nothing is timed. A wrapped hook called
while no request of the process is timed (tracing's unsampled requests) costs one
extra call and a test of an empty dict.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from ..worker import FlaskWorker

HOOKS = (("_pre_process", "pre"), ("_predict", "predict"), ("_post_process", "post"))
# The request each thread is timing, by thread id: a dict rather than a threading.local
# so that "none at all", the common case with tracing's sampling, is one test.
_requests: dict[int, StageTimes] = {}


class StageTimes:
    """The stages of one request, each added when it ends (see the module's docstring)."""

    __slots__ = ("received", "last", "stages", "spans")

    def __init__(self, received: float, spans: bool = False) -> None:
        now = time.perf_counter()
        self.received = received
        self.last = now
        self.stages: dict[str, float] = {"queue": now - received}
        # With ``spans`` (a traced request): each stage's start and end, for its span.
        self.spans: list[tuple[str, float, float]] | None = \
            [("queue", received, now)] if spans else None

    def mark(self, name: str) -> None:
        """End stage ``name`` now: it lasted since the last mark."""
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        if self.spans is not None:
            self.spans.append((name, self.last, now))
        self.last = now

    def add(self, name: str, started: float, ended: float) -> None:
        """Add a stage timed elsewhere (a hook, within the current mark's span)."""
        self.stages[name] = self.stages.get(name, 0.0) + ended - started
        if self.spans is not None:
            self.spans.append((name, started, ended))

    def header(self) -> str:
        """The ``Server-Timing`` value: each stage, then ``server``, in milliseconds."""
        total = time.perf_counter() - self.received
        stages = dict(self.stages)
        compute = stages.pop("compute", None)
        if compute is not None and "predict" not in stages:
            stages["batch"] = max(0.0, compute - stages.get("pre", 0.0) - stages.get("post", 0.0))
        parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items()]
        parts.append(f"server;dur={total * 1000:.3f}")
        return ", ".join(parts)


def begin(received: float, spans: bool = False) -> StageTimes:
    """Start timing the request of this thread, received (its last byte) at ``received``
    (``spans``: keep each stage's start and end too)."""
    times = StageTimes(received, spans)
    _requests[threading.get_ident()] = times
    return times


def end() -> None:
    """Stop timing this thread's request."""
    _requests.pop(threading.get_ident(), None)


def _timed(hook: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    @functools.wraps(hook)
    def timed(value: Any) -> Any:
        # None: the batch thread, a job, an unsampled request: nothing of this thread is timed.
        times = _requests.get(threading.get_ident()) if _requests else None
        if times is None:
            return hook(value)
        started = time.perf_counter()
        try:
            return hook(value)
        finally:
            times.add(name, started, time.perf_counter())

    return timed


def time_hooks(worker: FlaskWorker) -> None:
    """Wrap the worker's three hooks so that each call is added to its request's times
    (after the compute strategy is chosen: it looks at the unwrapped ``_predict``)."""
    for attribute, name in HOOKS:
        setattr(worker, attribute, _timed(getattr(worker, attribute), name))
