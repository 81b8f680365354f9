"""tracing.py without a gateway: W3C traceparent reading, sampling, parent order, and the
OTLP protobuf a batch becomes (decoded back with opentelemetry-proto)."""

from __future__ import annotations

import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from basic_inference_server import otlp_wire
from basic_inference_server.tracing import (
    Exporter,
    Tracer,
    TracingSpec,
    check_tracing,
    read_traceparent,
    restore,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Kept(Exporter):
    """An exporter that keeps its spans (no thread, no receiver)."""

    def __init__(self, spec: TracingSpec) -> None:
        self.spec, self.spans, self.dropped = spec, [], 0
        self.fixed = otlp_wire.resource({"service.name": spec.service, "bis.role": "front"},
                                        "basic_inference_server")
        self.wake, self.lock = threading.Event(), threading.Lock()


@pytest.mark.parametrize(("value", "expected"), [
    (f"00-{TRACE}-{PARENT}-01", (int(TRACE, 16), int(PARENT, 16), True)),
    (f"00-{TRACE}-{PARENT}-00", (int(TRACE, 16), int(PARENT, 16), False)),
    (f" 00-{TRACE}-{PARENT}-09 ", (int(TRACE, 16), int(PARENT, 16), True)),
    (f"01-{TRACE}-{PARENT}-01-more", (int(TRACE, 16), int(PARENT, 16), True)),
    (f"00-{TRACE}-{PARENT}-01-more", None),  # version 00 has four fields
    (f"ff-{TRACE}-{PARENT}-01", None),
    (f"00-{'0' * 32}-{PARENT}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE.upper()}-{PARENT}-01", None),
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    ("", None), ("garbage", None),
])
def test_traceparent_is_read_as_w3c_says(value, expected):
    assert read_traceparent(value.encode()) == expected


def test_a_request_follows_its_callers_flag_and_the_rest_sample_at_the_rate():
    spec = TracingSpec("http://127.0.0.1:9/v1/traces", sample=0.0)
    tracer = Tracer(spec, "front", Kept(spec))
    assert tracer.begin("run", [], time.perf_counter(), True) is None  # SAMPLE 0
    unsampled = [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())]
    assert tracer.begin("run", unsampled, time.perf_counter(), True) is None
    sampled = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]
    trace = tracer.begin("run", sampled, time.perf_counter(), True)
    assert trace is not None and trace.trace_id == TRACE
    # A server never starts a trace of its own.
    everything = Tracer(TracingSpec(spec.otlp_url, sample=1.0), "server", Kept(spec))
    assert everything.begin("endpoint", [], time.perf_counter(), False) is None
    assert everything.begin("run", [], time.perf_counter(), True) is not None


def test_spans_nest_under_steps_and_encode_as_otlp():
    spec = TracingSpec("http://127.0.0.1:9/v1/traces", sample=1.0, service="svc")
    kept = Kept(spec)
    tracer = Tracer(spec, "front", kept)
    trace = tracer.begin("run", [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())],
                         time.perf_counter(), True, **{"bis.request_id": "r1"})
    assert trace is not None
    step = trace.start("step a")
    token = trace.within(step)
    upstream = trace.start("upstream a", client=True)
    assert trace.line(upstream) == f"traceparent: 00-{TRACE}-{upstream.id:016x}-01\r\n".encode()
    trace.stop(upstream, {"http.response.status_code": 200})
    restore(token)
    trace.stop(step)
    trace.record("queue", time.perf_counter() - 0.01, time.perf_counter())
    trace.end({"bis.endpoint": "a"})
    decoded = ExportTraceServiceRequest.FromString(otlp_wire.request(kept.fixed, kept.spans))
    resource = decoded.resource_spans[0]
    assert {a.key: a.value.string_value for a in resource.resource.attributes} == {
        "service.name": "svc", "bis.role": "front"}
    spans = {s.name: s for s in resource.scope_spans[0].spans}
    assert set(spans) == {"run", "step a", "upstream a", "queue"}
    assert spans["run"].parent_span_id.hex() == PARENT
    assert spans["step a"].parent_span_id == spans["run"].span_id
    assert spans["upstream a"].parent_span_id == spans["step a"].span_id
    assert spans["queue"].parent_span_id == spans["run"].span_id
    assert all(s.trace_id.hex() == TRACE for s in spans.values())
    attributes = {a.key: a.value for a in spans["upstream a"].attributes}
    assert attributes["http.response.status_code"].int_value == 200
    run_attributes = {a.key: a.value.string_value for a in spans["run"].attributes}
    assert run_attributes == {"bis.request_id": "r1", "bis.endpoint": "a"}
    assert spans["queue"].end_time_unix_nano - spans["queue"].start_time_unix_nano >= 9_000_000


@pytest.mark.parametrize(("value", "words"), [
    ({"SAMPLE": 0.5}, "OTLP_URL"), ({"OTLP_URL": "ftp://x"}, "OTLP_URL"),
    ({"OTLP_URL": "http://x", "SAMPLE": 2}, "SAMPLE"),
    ({"OTLP_URL": "http://x", "SAMPLE": True}, "SAMPLE"),
    ({"OTLP_URL": "http://x", "RATE": 1}, "unknown"),
])
def test_bad_tracing_settings_are_refused(value, words):
    problem = check_tracing(value)
    assert problem is not None and words in problem
    assert check_tracing({"OTLP_URL": "http://x", "SAMPLE": 0}) is None
