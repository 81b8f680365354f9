"""OpenTelemetry traces of requests and jobs (``TRACING``; the ``otel`` extra).

Off (the default), nothing here imports OpenTelemetry: every process checks one
attribute per request. On, each process exports its spans in batches over OTLP/HTTP
(``OTLP_URL``) from a thread of the SDK's.

**Who samples.** The gateway front decides for the whole trace: a request that brings a
W3C ``traceparent`` follows its sampled flag; one without is sampled at ``SAMPLE``.
Only a sampled request carries a ``traceparent`` on its way (to its endpoint server,
to a remote gateway, in its job), and the endpoint servers trace exactly the requests
that carry one: an unsampled request costs the servers nothing, and the front one
random draw.

**The spans.** The front: ``run`` (the request, as the caller sees it), ``admit`` (the
tenant gate), ``queue`` (its wait in the fair queue), ``step <target>`` (a pipeline's
step), ``upstream <route>`` (the call to a server or a remote gateway), ``job submit``.
An endpoint server: ``endpoint <name>`` with its stages as children (``queue``,
``decode``, ``pre``, ``predict``, ``post``, ``batch``, ``encode``: see
:mod:`.server.timing`), and for a job ``job <name>`` with ``job queue`` (from its
submit to its start). The stages are timed as for ``Server-Timing`` and turned into
spans with their own start and end times once the request is answered: the hooks pay
no span creation while they run.
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

TRACEPARENT = b"traceparent"
# time.perf_counter() to Unix nanoseconds (a span's times), fixed once per process.
_EPOCH_NS = time.time_ns() - time.perf_counter_ns()
# The span a step's calls are children of (a pipeline's steps run in tasks of their own).
_PARENT: ContextVar[Any] = ContextVar("bis_trace_parent", default=None)


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


class Tracer:
    """One process's tracer: the SDK's provider, its OTLP exporter and the W3C codec."""

    def __init__(self, spec: TracingSpec, role: str, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.spec = spec
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": spec.service, "bis.role": role}))
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter if exporter is not None else OTLPSpanExporter(endpoint=spec.otlp_url)))
        self.tracer = self.provider.get_tracer("basic_inference_server")
        self.codec = TraceContextTextMapPropagator()
        self.kinds = SpanKind
        self.in_context = set_span_in_context

    def parent(self, headers: list[tuple[bytes, bytes]]) -> tuple[Any, bool] | None:
        """The context of a request's ``traceparent`` and its sampled flag (None: it has
        none, or a malformed one)."""
        from opentelemetry.trace import get_current_span

        value = next((v for h, v in headers if h == TRACEPARENT), None)
        if value is None:
            return None
        context = self.codec.extract({"traceparent": value.decode("latin-1")})
        span_context = get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return None
        return context, span_context.trace_flags.sampled

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
            context = None
        elif parent[1]:
            context = parent[0]
        else:
            return None
        span = self.tracer.start_span(name, context=context, kind=self.kinds.SERVER,
                                      start_time=ns(started), attributes=attributes)
        return Trace(self, span)

    def from_line(self, traceparent: str | None, name: str, started: float,
                  **attributes: Any) -> Trace | None:
        """The trace of a job whose submit sampled it (``traceparent``: what it carried)."""
        if not traceparent:
            return None
        return self.begin(name, [(TRACEPARENT, traceparent.encode("latin-1"))], started,
                          False, **attributes)


class Trace:
    """The spans of one sampled request (or job) in one process."""

    def __init__(self, tracer: Tracer, root: Span) -> None:
        self.tracer = tracer
        self.root = root

    @property
    def trace_id(self) -> str:
        """The W3C trace id (the access log's)."""
        return f"{self.root.get_span_context().trace_id:032x}"

    def start(self, name: str, started: float | None = None, client: bool = False,
              attributes: dict[str, Any] | None = None) -> Span:
        """A span begun now (or at ``started``), a child of the current step's span or
        of the root; end it with :meth:`stop`."""
        parent = _PARENT.get() or self.root
        kinds = self.tracer.kinds
        return self.tracer.tracer.start_span(
            name, context=self.tracer.in_context(parent),
            kind=kinds.CLIENT if client else kinds.INTERNAL,
            start_time=ns(time.perf_counter() if started is None else started),
            attributes=attributes)

    @staticmethod
    def stop(span: Span, ended: float | None = None, **attributes: Any) -> None:
        """End ``span`` now (or at ``ended``), with more attributes."""
        if attributes:
            span.set_attributes(attributes)
        span.end(end_time=ns(time.perf_counter() if ended is None else ended))

    def record(self, name: str, started: float, ended: float, parent: Span | None = None,
               **attributes: Any) -> None:
        """A finished span of ``started`` to ``ended`` (a child of ``parent``, else of
        the current step's span or of the root)."""
        if parent is None:
            span = self.start(name, started, attributes=attributes)
        else:
            span = self.tracer.tracer.start_span(
                name, context=self.tracer.in_context(parent), start_time=ns(started),
                attributes=attributes)
        self.stop(span, ended)

    def line(self, span: Span | None = None) -> bytes:
        """The ``traceparent`` header line naming ``span`` (else the root) as parent."""
        carrier: dict[str, str] = {}
        self.tracer.codec.inject(carrier, context=self.tracer.in_context(span or self.root))
        return b"traceparent: " + carrier["traceparent"].encode() + b"\r\n"

    def value(self, span: Span | None = None) -> str:
        """The ``traceparent`` value naming ``span`` (else the root): a job carries it."""
        return self.line(span)[len(b"traceparent: "):-2].decode()

    def within(self, span: Span) -> Any:
        """Make ``span`` the parent of the spans this task starts; give the returned
        token to :func:`restore`."""
        return _PARENT.set(span)

    def end(self, ended: float | None = None, **attributes: Any) -> None:
        """End the root span (the request was answered)."""
        self.stop(self.root, ended, **attributes)


def restore(token: Any) -> None:
    """Undo :meth:`Trace.within`."""
    _PARENT.reset(token)
