"""OpenTelemetry traces of requests and jobs (``TRACING``).

Off (the default), every process checks one attribute per request. On, each process
sends its spans in batches over OTLP/HTTP (``OTLP_URL``, protobuf) from a thread of its
own. No OpenTelemetry package is needed, on or off (see below).

**Who samples.** The gateway front decides for the whole trace: a request that brings a
W3C ``traceparent`` follows its sampled flag; one without is sampled at ``SAMPLE``.
Only a sampled request carries a ``traceparent`` on its way (to its endpoint server,
to a remote gateway, in its job), and the endpoint servers trace exactly the requests
that carry one: an unsampled request costs the servers nothing, and the front one
random draw.

**The spans.** The front: ``run`` (the request, as the caller sees it), ``gate`` (the
tenant gate, when its store was waited for), ``queue`` (its wait in the fair queue),
``step <target>`` (a pipeline's step), ``upstream <route>`` (the call to a server or a
remote gateway), ``jobs`` and ``job submit``. An endpoint server: ``endpoint <name>``
with its stages as children (``queue``, ``decode``, ``pre``, ``predict``, ``post``,
``batch``, ``encode``: see :mod:`.server.timing`), and for a job ``job <name>`` with
``job queue`` (from its submit to its start). The stages are timed as for
``Server-Timing`` and become spans once the request is answered; a stage shorter than
:data:`MIN_STAGE_S` makes no span of its own (its time is in the parent's
``bis.server_timing`` attribute).

**Why spans are recorded here rather than by the SDK's tracer.** The OpenTelemetry
SDK's span costs about 25 us of CPU to start and end in CPython, and as much again to
encode in its batch processor (measured): more than the whole front costs a noop
request. A span here is written as OTLP's protobuf bytes when it ends (1 to 3.6 us, by
its attributes: :mod:`.otlp_wire`) and appended to a list that a thread of the process posts in
batches. For the same reason the W3C ``traceparent`` (four hexadecimal fields) is read
here: the API's propagator takes 4 us a request to build the context objects this
code has no use for.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import otlp_wire

log = logging.getLogger(__name__)

TRACEPARENT = b"traceparent"
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z",
                          re.S)
_CANONICAL = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# time.perf_counter() to Unix nanoseconds (a span's times), fixed once per process.
_EPOCH_NS = time.time_ns() - time.perf_counter_ns()
# The span a step's calls are children of (a pipeline's steps run in tasks of their own).
_PARENT: ContextVar[Any] = ContextVar("bis_trace_parent", default=None)
# A stage shorter than this makes no span of its own (a noop's stages take microseconds).
MIN_STAGE_S = 0.0001
# Spans a process keeps waiting for the exporter; past it, new ones are dropped (counted).
MAX_QUEUED = 8192
# Spans per export, at most.
MAX_BATCH = 1024
# How often the exporter sends what it has (ms): the SDK's variable, the SDK's default.
SCHEDULE_DELAY_MS = float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000"))
EXPORT_TIMEOUT_S = 10.0
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's Span.SpanKind values


def ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as Unix nanoseconds."""
    return int(perf * 1e9) + _EPOCH_NS


@dataclass(frozen=True)
class TracingSpec:
    """The ``TRACING`` setting, as the processes get it."""

    otlp_url: str
    sample: float = 0.1
    service: str = "basic_inference_server"

    @classmethod
    def of(cls, setting: dict[str, Any] | None, service: str) -> TracingSpec | None:
        """The spec of a ``TRACING`` value (None: off)."""
        if not setting:
            return None
        return cls(setting["OTLP_URL"], float(setting.get("SAMPLE", 0.1)),
                   setting.get("SERVICE_NAME") or service)


def check_tracing(value: dict[str, Any] | None) -> str | None:
    """The TRACING setting's check."""
    if value is None:
        return None
    unknown = sorted(set(value) - {"OTLP_URL", "SAMPLE", "SERVICE_NAME"})
    if unknown:
        return f"unknown parts {unknown}; TRACING takes OTLP_URL, SAMPLE, SERVICE_NAME"
    url = value.get("OTLP_URL")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "OTLP_URL must be the http(s):// URL of an OTLP/HTTP traces receiver"
    sample = value.get("SAMPLE", 0.1)
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
        return "SAMPLE must be a fraction from 0 to 1"
    name = value.get("SERVICE_NAME", "")
    if not isinstance(name, str) or len(name) > 200:
        return "SERVICE_NAME must be text of at most 200 characters"
    return None


class Span:
    """A span begun and not yet ended."""

    __slots__ = ("id", "parent", "name", "started", "kind", "attributes")

    def __init__(self, parent: int, name: str, started: float, kind: int,
                 attributes: dict[str, Any] | None) -> None:
        self.id = random.getrandbits(64) or 1
        self.parent = parent
        self.name = name
        self.started = started
        self.kind = kind
        self.attributes = attributes


class Exporter:
    """One process's spans on their way out: a bounded list of encoded spans, a thread
    that sends it in batches every :data:`SCHEDULE_DELAY_MS` (or sooner when a batch is
    full), and a last send at exit."""

    def __init__(self, spec: TracingSpec, role: str) -> None:
        self.spec = spec
        self.fixed = otlp_wire.resource({"service.name": spec.service, "bis.role": role},
                                        "basic_inference_server")
        self.spans: list[bytes] = []
        self.dropped = 0
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="bis-traces", daemon=True)
        self.thread.start()
        atexit.register(self.flush)

    def add(self, span: bytes) -> None:
        """Queue a finished span, encoded (dropped, and counted, when the queue is full)."""
        spans = self.spans
        if len(spans) >= MAX_QUEUED:
            self.dropped += 1
            return
        spans.append(span)
        if len(spans) == MAX_BATCH:
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(SCHEDULE_DELAY_MS / 1000)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send every queued span now."""
        with self.lock:  # one send at a time (the thread, and the exit's)
            while self.spans:
                batch, self.spans[:MAX_BATCH] = self.spans[:MAX_BATCH], []
                self._send(otlp_wire.request(self.fixed, batch))
            if self.dropped:
                log.warning("tracing: %d spans dropped (the exporter fell behind)",
                            self.dropped)
                self.dropped = 0

    def _send(self, body: bytes) -> None:
        import urllib.request  # (here: every process imports this module, few send)

        request = urllib.request.Request(self.spec.otlp_url, data=body, method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=EXPORT_TIMEOUT_S) as resp:
                resp.read()
        except OSError as exc:  # a receiver away loses this batch, never a request
            log.warning("tracing: could not send spans to %s: %s", self.spec.otlp_url, exc)


def read_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """A W3C ``traceparent`` value's trace id, parent id and sampled flag; None when it
    is not one (Trace Context, level 1: a version other than ``ff``; for ``00`` exactly
    four fields, a later version may add more; ids not all zeros)."""
    if _CANONICAL.fullmatch(value):
        # (The form every hop of a trace sends, the front's included: read by slicing.)
        trace_id, parent_id, flags = int(value[3:35], 16), int(value[36:52], 16), value[53:]
    else:
        match = _TRACEPARENT.match(value.strip())
        if match is None:
            return None
        version, trace, parent, flags, rest = match.groups()
        if version == b"ff" or (version == b"00" and rest):
            return None
        trace_id, parent_id = int(trace, 16), int(parent, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


class Tracer:
    """One process's tracer: where its spans go, and how a request's are begun."""

    def __init__(self, spec: TracingSpec, role: str, exporter: Exporter | None = None) -> None:
        self.spec = spec
        self.exporter = exporter if exporter is not None else Exporter(spec, role)

    @staticmethod
    def parent(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, bool] | None:
        """A request's ``traceparent``: trace id, span id and sampled flag (None: it has
        none, or a malformed one)."""
        for header, value in headers:
            if header == TRACEPARENT:
                return read_traceparent(value)
        return None

    def begin(self, name: str, headers: list[tuple[bytes, bytes]], started: float,
              sample_roots: bool, **attributes: Any) -> Trace | None:
        """The trace of a request received at ``started``: its root span ``name``, a
        child of its ``traceparent``; None when it is not sampled. Without a
        ``traceparent``, ``sample_roots`` (the front) draws at SAMPLE; the servers
        trace only what the front sampled."""
        parent = self.parent(headers)
        if parent is None:
            if not sample_roots or random.random() >= self.spec.sample:
                return None
            trace_id, parent_id = random.getrandbits(128) or 1, 0
        elif parent[2]:
            trace_id, parent_id = parent[0], parent[1]
        else:
            return None
        return Trace(self.exporter, trace_id, Span(parent_id, name, started, SERVER, attributes))

    def from_line(self, traceparent: str | None, name: str, started: float,
                  **attributes: Any) -> Trace | None:
        """The trace of a job whose submit sampled it (``traceparent``: what it carried)."""
        if not traceparent:
            return None
        return self.begin(name, [(TRACEPARENT, traceparent.encode("latin-1"))], started,
                          False, **attributes)


class Trace:
    """The spans of one sampled request (or job) in one process."""

    __slots__ = ("exporter", "id", "root")

    def __init__(self, exporter: Exporter, trace_id: int, root: Span) -> None:
        self.exporter = exporter
        self.id = trace_id
        self.root = root

    @property
    def trace_id(self) -> str:
        """The W3C trace id (the access log's)."""
        return f"{self.id:032x}"

    def start(self, name: str, started: float | None = None, client: bool = False,
              attributes: dict[str, Any] | None = None) -> Span:
        """A span begun now (or at ``started``), a child of the current step's span or
        of the root; end it with :meth:`stop`."""
        parent = _PARENT.get() or self.root
        return Span(parent.id, name, time.perf_counter() if started is None else started,
                    CLIENT if client else INTERNAL, attributes)

    def stop(self, span: Span, attributes: dict[str, Any] | None = None,
             ended: float | None = None) -> None:
        """End ``span`` now (or at ``ended``), with more ``attributes``."""
        if attributes:
            span.attributes = {**(span.attributes or {}), **attributes}
        self.exporter.add(otlp_wire.span(
            self.id, span.id, span.parent, span.name, span.kind, ns(span.started),
            ns(time.perf_counter() if ended is None else ended), span.attributes))

    def record(self, name: str, started: float, ended: float, parent: Span | None = None,
               attributes: dict[str, Any] | None = None) -> None:
        """A finished span of ``started`` to ``ended`` (a child of ``parent``, else of
        the current step's span or of the root)."""
        parent_id = (parent or _PARENT.get() or self.root).id
        self.exporter.add(otlp_wire.span(self.id, random.getrandbits(64) or 1, parent_id, name,
                                         INTERNAL, ns(started), ns(ended), attributes))

    def value(self, span: Span | None = None) -> str:
        """The ``traceparent`` value naming ``span`` (else the root) as parent."""
        return f"00-{self.id:032x}-{(span or self.root).id:016x}-01"

    def line(self, span: Span | None = None) -> bytes:
        """The ``traceparent`` header line naming ``span`` (else the root) as parent."""
        return b"traceparent: " + self.value(span).encode() + b"\r\n"

    def within(self, span: Span) -> Any:
        """Make ``span`` the parent of the spans this task starts; give the returned
        token to :func:`restore`."""
        return _PARENT.set(span)

    def end(self, attributes: dict[str, Any] | None = None) -> None:
        """End the root span (the request was answered), with more ``attributes``."""
        self.stop(self.root, attributes)


def restore(token: Any) -> None:
    """Undo :meth:`Trace.within`."""
    _PARENT.reset(token)
