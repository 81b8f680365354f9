"""otlp_wire.py writes what opentelemetry-proto would: each span, and a whole export
request, decoded back and compared with the same messages built by the library."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from basic_inference_server import otlp_wire

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def library_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(string_value=str(value))


def library_span(span_id: int, parent: int, name: str, kind: int, start: int, end: int,
                 attributes: dict[str, object] | None) -> Span:
    return Span(trace_id=TRACE.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"),
                parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name,
                kind=kind, start_time_unix_nano=start, end_time_unix_nano=end,
                attributes=[KeyValue(key=k, value=library_value(v))
                            for k, v in (attributes or {}).items()])


CASES = [
    (1, 0, "run", 2, 1_733_000_000_000_000_000, 1_733_000_000_000_500_000,
     {"bis.request_id": "r-1", "http.response.status_code": 200}),
    ((1 << 64) - 1, 0xFFFF, "upstream noop", 3, 1, 2**63, None),
    (7, 9, "é" * 100, 1, 0, 0, {"ok": True, "no": False, "neg": -5, "big": 2**62,
                                "long": "x" * 300, "": ""}),
]


@pytest.mark.parametrize("case", CASES)
def test_a_span_decodes_as_the_library_builds_it(case):
    encoded = otlp_wire.span(TRACE, *case)
    decoded = ScopeSpans.FromString(encoded).spans
    assert len(decoded) == 1
    assert decoded[0] == library_span(*case)


def test_a_request_decodes_as_the_library_builds_it():
    fixed = otlp_wire.resource({"service.name": "svc", "bis.role": "server"}, "scope")
    body = otlp_wire.request(fixed, [otlp_wire.span(TRACE, *case) for case in CASES])
    expected = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value="svc")),
            KeyValue(key="bis.role", value=AnyValue(string_value="server"))]),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name="scope"),
                                spans=[library_span(*case) for case in CASES])])])
    assert ExportTraceServiceRequest.FromString(body) == expected


def test_real_spans_are_the_librarys_bytes():
    # (Proto3 leaves a zero or an empty string out, where these bytes keep it: the third
    # case decodes the same but is two fields longer.)
    for case in CASES[:2]:
        assert otlp_wire.span(TRACE, *case)[2:] == library_span(*case).SerializeToString()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**35, 2**64 - 1])
def test_varints_read_back(value):
    encoded = otlp_wire.varint(value)
    decoded = sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded))
    assert decoded == value and all(b & 0x80 for b in encoded[:-1]) and encoded[-1] < 0x80
