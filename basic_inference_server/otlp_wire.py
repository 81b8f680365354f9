"""OTLP's trace export request, written as protobuf bytes by hand.

Why by hand: a span is encoded on the request path of every traced request, and
``opentelemetry-proto``'s classes (upb) cost about 5.5 us a span in CPython (3.6 to
build the message, 1.8 to add and serialise it), against 1 to 3.6 us (no attributes to
three) for the few ``struct`` calls below. Only what :mod:`.tracing` sends is written, from
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``:

- ``Span``: trace_id (1), span_id (2), parent_span_id (4), name (5), kind (6),
  start_time_unix_nano (7, fixed64), end_time_unix_nano (8, fixed64), attributes (9);
- ``KeyValue``: key (1), value (2); ``AnyValue``: string_value (1), bool_value (2),
  int_value (3);
- ``ExportTraceServiceRequest`` > ``ResourceSpans`` (resource (1), scope_spans (2)) >
  ``ScopeSpans`` (scope (1), spans (2)).

An encoded span is a ``bytes`` object (the GC does not track it), ready to be
concatenated into a request. ``tests/unit/test_otlp_wire.py`` decodes what is written
here with ``opentelemetry-proto`` and compares it with the same spans built by it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping
from typing import Any

_U64 = 0xFFFFFFFFFFFFFFFF
# trace_id (1: 16 bytes), span_id (2: 8 bytes), both as bytes fields (wire type 2).
_IDS = struct.Struct(">2sQQ2sQ")
_PARENT = struct.Struct(">2sQ")  # parent_span_id (4)
# kind (6, varint: the OTLP kinds are all below 128), start (7) and end (8), fixed64.
_KIND_TIMES = struct.Struct("<BBBQBQ")


_SMALL = [bytes((i,)) for i in range(0x80)]  # one-byte varints, made once


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf varint."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited field ``tag`` (its key byte) holding ``payload``."""
    return _SMALL[tag] + varint(len(payload)) + payload


# Span names, attribute keys and attributes of a number or a truth value repeat: each is
# encoded once (``typed``: True and 1 are different attributes).
@functools.lru_cache(maxsize=4096)
def _name(name: str) -> bytes:
    return delimited(0x2A, name.encode())


@functools.lru_cache(maxsize=4096)
def _key(key: str) -> bytes:
    return delimited(0x0A, key.encode())


@functools.lru_cache(maxsize=4096, typed=True)
def _fixed(tag: int, key: str, value: int) -> bytes:
    if isinstance(value, bool):
        any_value = b"\x10\x01" if value else b"\x10\x00"
    else:
        any_value = b"\x18" + varint(value & _U64)  # int64: a negative is 10 bytes, as protobuf's
    return delimited(tag, _key(key) + delimited(0x12, any_value))


def attribute(key: str, value: Any, tag: int = 0x4A) -> bytes:
    """One ``KeyValue`` as a span's attributes field (9; ``tag`` 0x0A: a resource's, 1):
    a bool, an int, else the value's text."""
    if isinstance(value, int):
        return _fixed(tag, key, value)
    text = str(value).encode()
    key_field = _key(key)
    size = len(key_field) + len(text) + 4  # the KeyValue's: its key, then value's 2 + 2
    if size < 0x80:  # (most: every length is one byte)
        return bytes((tag, size)) + key_field + bytes((0x12, len(text) + 2, 0x0A, len(text))) \
            + text
    return delimited(tag, key_field + delimited(0x12, delimited(0x0A, text)))


def span(trace_id: int, span_id: int, parent_id: int, name: str, kind: int,
         start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None) -> bytes:
    """One ``Span`` as a ``ScopeSpans.spans`` field (2); ``parent_id`` 0: a root."""
    body = _IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _U64, b"\x12\x08", span_id)
    if parent_id:
        body += _PARENT.pack(b"\x22\x08", parent_id)
    body += _name(name) + _KIND_TIMES.pack(0x30, kind, 0x39, start_ns, 0x41, end_ns)
    if attributes:
        body += b"".join([attribute(key, value) for key, value in attributes.items()])
    return b"\x12" + varint(len(body)) + body


def resource(attributes: Mapping[str, str], scope: str) -> tuple[bytes, bytes]:
    """The fixed parts of a process's requests: its ``Resource`` field and its scope's."""
    resource_field = delimited(0x0A, b"".join(attribute(k, v, 0x0A)
                                                    for k, v in attributes.items()))
    scope_field = delimited(0x0A, _key(scope))  # (InstrumentationScope.name: field 1)
    return resource_field, scope_field


def request(fixed: tuple[bytes, bytes], spans: Iterable[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of encoded ``spans`` under ``fixed``
    (:func:`resource`)."""
    resource_field, scope_field = fixed
    scope_spans = delimited(0x12, scope_field + b"".join(spans))
    return delimited(0x0A, resource_field + scope_spans)
