"""Wire format shared by the gateway front and the endpoint servers."""

from __future__ import annotations

import re
import socket
import time
from itertools import accumulate, islice, repeat
from operator import eq, sub
from typing import Any

import orjson

from .errors import BadRequest, PayloadTooLarge, ServingError
from .version import __version__

JSON = "application/json"
HOSTNAME = socket.gethostname()
_DUMP_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Deepest nesting of arrays and objects a request body may have. orjson reads 1024 levels
# but writes only 254, and an accepted body is written again inside answers, job records
# and status pages a few levels down: a body between the two limits would be accepted,
# then break every later answer that carries it. 64 is far beyond any real payload.
MAX_JSON_DEPTH = 64
# Most values (objects, arrays, strings, numbers...) a decoded body may hold. A decoded
# value takes up to 30-80 times the bytes it is written with ("{}" becomes a dict of 64
# bytes): a body's count of values, not its size, bounds what decoding it costs. A million
# values decode to about 100 MB at most, no more than the largest body (MAX_REQUEST_SIZE,
# 64 MiB) of one string costs decoded; arrays larger than that travel as base64.
MAX_JSON_ELEMENTS = 1_000_000
_RUNS = re.compile(rb"\[+|\]+")
_SHAPE = bytes.maketrans(b"{}", b"[]")
_NOT_SHAPE = bytes(b for b in range(256) if b not in b'[]{}"')
# For counting values: whitespace dropped, each byte of a scalar (or string) read as "0".
_COUNTED = bytes(b if b in b'[]{},"' else ord("0") for b in range(256))
_BLANKS = b" \t\r\n"
# Strings once escaped quotes are neutralised (see _plain): no escape left to skip.
_QUOTED = re.compile(rb'"[^"]*"')
# Passes over large bodies are cut into calls over this many bytes: each call holds the
# GIL, and a scan in the front's thread pool must leave its event loop a turn often.
_CHUNK = 1 << 20


def _fallback(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", "replace")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Serialise an answer; values JSON has no type for become lists or strings."""
    return orjson.dumps(obj, default=_fallback, option=_DUMP_OPTS)


def json_depth_over(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when valid JSON ``raw`` nests arrays and objects deeper than ``limit``.

    C-speed passes over the bytes, not a walk over millions of decoded objects: drop the
    escapes, keep only brackets and quotes, drop what lies between quotes (strings may
    hold brackets), then measure the nesting. A body with no more brackets than the
    limit cannot be too deep: most bodies take only the two counts.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    shape = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_SHAPE, _NOT_SHAPE)
    # Two quotes in a row end one string and start the next, or close an empty one:
    # either way no bracket lies between them, and most strings hold none.
    shape = shape.replace(b'""', b"")
    if b'"' in shape:
        shape = b"".join(shape.split(b'"')[::2])
    return _nesting(shape, limit) > limit


def _nesting(shape: bytes, limit: int) -> int:
    """Depth of a balanced string of ``[`` and ``]`` (anything over ``limit`` may read limit+1).

    Removing every ``[]`` takes exactly one level off (each deepest point is one), and
    collapses wide, shallow bodies (``[{},{},...]``) at once; peel while that pays, then
    sum the lengths of the remaining runs of ``[`` and ``]``.
    """
    peeled = 0
    while shape and peeled <= limit:
        thinner = shape.replace(b"[]", b"")
        peeled += 1
        paid = len(thinner) * 4 < len(shape) * 3
        shape = thinner
        if not paid:
            break
    if not shape or peeled > limit:
        return peeled
    lengths = list(map(len, _RUNS.findall(shape)))
    # Runs alternate, opening first: the depth after the k-th opening run is the sum of
    # the openings so far minus the closings before it.
    return peeled + max(accumulate(map(sub, lengths[0::2], [0, *lengths[1::2]])))


def _plain(raw: bytes) -> bytes:
    r"""``raw`` with every escaped quote made harmless, the same length: each ``"`` left
    delimits a string, each backslash left starts an escape.

    Escapes pair up from the left in a run of backslashes (``\\`` then ``\"``), so two
    ``replace`` passes find them all: ``\\`` becomes ``\_``, then ``\"`` becomes ``\'``.
    """
    if b"\\" not in raw:
        return raw
    return raw.replace(b"\\\\", b"\\_").replace(b'\\"', b"\\'")


def _count(text: bytes, chars: tuple[bytes, ...], stop: int | None = None) -> int:
    """How many of ``chars`` (of one or two bytes) ``text[:stop]`` holds (``bytes.count``,
    by chunks)."""
    stop = len(text) if stop is None else stop
    if stop <= _CHUNK:
        return sum(text.count(char, 0, stop) for char in chars)
    cuts = range(_CHUNK, stop, _CHUNK)
    # A pair of bytes (``[]``) may straddle a cut between chunks: counted there.
    return (sum(text.count(char, i, min(i + _CHUNK, stop))
                for char in chars for i in range(0, stop, _CHUNK))
            + sum(text.startswith(char, i - 1) for char in chars if len(char) == 2 for i in cuts))


def _kept(text: bytes, delete: bytes, stop: int | None = None, table: bytes = _SHAPE) -> bytes:
    """``text[:stop]`` without the bytes in ``delete``, the others mapped by ``table``
    (by default ``{}`` read as ``[]``), by chunks."""
    stop = len(text) if stop is None else stop
    if stop <= _CHUNK:
        return text[:stop].translate(table, delete)
    return b"".join(text[i:min(i + _CHUNK, stop)].translate(table, delete)
                    for i in range(0, stop, _CHUNK))


def _strings_dropped(shape: bytes) -> bytes:
    """A shape (quotes, brackets, marks) without its strings' contents."""
    return _QUOTED.sub(b"", shape) if b'"' in shape else shape


def json_elements_over(raw: bytes, limit: int = MAX_JSON_ELEMENTS) -> bool:
    """True when ``raw`` holds more than ``limit`` values, counted from the bytes.

    Each value but the outermost follows a comma or is the first item of a non-empty
    array or object: values = commas + non-empty containers + 1. A body no longer than
    the limit cannot be over it (a value takes a byte at least); commas plus opening
    brackets bound the count from above (three C-speed counts): most bodies stop there.
    Over the limit by that bound, the body is counted exactly: without its blanks, each
    string read as one value (its commas and brackets are text), empty containers
    (``[]``, ``{}``) taken off.
    """
    if len(raw) <= limit or _count(raw, (b",", b"[", b"{")) < limit:
        return False
    shape = _kept(_plain(raw), _BLANKS, table=_COUNTED)
    if b'"' in shape:
        shape = _QUOTED.sub(b"0", shape)
    return _count(shape, (b",", b"[", b"{")) - _count(shape, (b"[]", b"{}")) >= limit


def parse_body(raw: bytes, max_size: int | None = None) -> dict[str, Any]:
    """Decode a request body that must be a JSON object: the one JSON policy.

    400 unless it is a JSON object nested at most :data:`MAX_JSON_DEPTH` levels;
    413 when it is longer than ``max_size`` bytes (where the caller has a limit), or
    holds more than :data:`MAX_JSON_ELEMENTS` values (checked before decoding).
    """
    if max_size is not None and len(raw) > max_size:
        raise PayloadTooLarge(f"body of {len(raw)} bytes is over the limit of {max_size} bytes",
                              MAX_REQUEST_SIZE=max_size)
    if not raw:
        raise BadRequest("empty body: send a JSON object with a SIGNATURE field")
    if json_elements_over(raw):
        raise PayloadTooLarge(f"body holds more than {MAX_JSON_ELEMENTS} values (objects, "
                              "arrays, strings, numbers...); send large arrays as base64",
                              MAX_JSON_ELEMENTS=MAX_JSON_ELEMENTS)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 with this error too.
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}")
    if json_depth_over(raw):
        raise BadRequest(f"body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
                         MAX_JSON_DEPTH=MAX_JSON_DEPTH)
    return body


def signature_of(body: dict[str, Any]) -> str:
    """The endpoint a request is for (400 when missing or not a string)."""
    sig = body.get("SIGNATURE")
    if sig is None:
        raise BadRequest("missing SIGNATURE: name the endpoint to run")
    if not isinstance(sig, str) or not sig:
        raise BadRequest(f"SIGNATURE must be a non-empty string, got {type(sig).__name__}")
    return sig


def now_text() -> str:
    """The local time as the original project's ``time`` fields write it."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def base_meta(server_name: str, app_version: str) -> dict[str, Any]:
    """Metadata every answer carries (the original's ``ver``, ``time`` and host info)."""
    return {"ver": __version__, "app_ver": app_version, "time": now_text(),
            "host": HOSTNAME, "server": server_name}


def error_body(err: ServingError, meta: dict[str, Any] | None = None) -> bytes:
    """The JSON body of an error answer, with ``meta`` added."""
    body = err.to_dict()
    if meta:
        body.update(meta)
    return dumps(body)


# -- routing without parsing: the front reads SIGNATURE (and ASYNC) from the raw bytes ----
# Every scan below is a few C-speed passes over the bytes (``replace``, ``translate``,
# ``count``, ``split`` and regexes that never scan the same bytes twice), so its time grows
# with the body's size, whatever the body holds: no Python loop runs per string or value.
_OBJECT_START = re.compile(rb"\s*\{")
# A top-level field's value: a scalar, or (looked ahead at, not taken) an object or array.
_VALUE = rb'\s*:\s*(?P<value>"[^"]*"|true|false|null|-?[0-9][0-9.eE+-]*|(?=[\[{]))'
# A key holding an escape (a backslash) in _plain text.
_ESCAPED_KEY = re.compile(rb'"[^"\\]*\\[^"]*"\s*:')
_FIELD_RES: dict[str, _Key] = {}
# Stands for each match in the text whose depth is measured: NUL never appears in valid
# JSON (raw control characters are refused inside strings and outside them).
_MARK = b"\x00"
_NOT_SHAPE_OR_MARK = bytes(b for b in range(256) if b not in b'[]{}"\x00')
# Marks a top-level field whose value is an object or an array.
CONTAINER = object()


def looks_like_object(raw: bytes) -> bool:
    """Whether a body starts as a JSON object does (no copy of the body is made)."""
    return _OBJECT_START.match(raw) is not None


def _top_level(text: bytes, pattern: re.Pattern[bytes]) -> tuple[int, int]:
    """How many matches of ``pattern`` in the ``_plain`` text of an object stand at its
    top level, and the index (among all matches) of the last of them (-1: none).

    Each match is replaced by a mark; everything but brackets, quotes and marks is
    dropped, then the strings; what is left between two marks is brackets only, and
    the running sum of their balance is each mark's depth (C iterators, no Python loop).
    """
    shape = _strings_dropped(_kept(pattern.sub(_MARK, text), _NOT_SHAPE_OR_MARK))
    pieces = shape.split(_MARK)
    depths = accumulate(map(sub, map(bytes.count, pieces, repeat(b"[")),
                            map(bytes.count, pieces, repeat(b"]"))))
    top = bytes(map(eq, islice(depths, len(pieces) - 1), repeat(1)))
    return top.count(1), top.rfind(1)


class _Key:
    """The patterns that find one key: anywhere, and as the object's first key."""

    __slots__ = ("anywhere", "first", "quoted")

    def __init__(self, key: str) -> None:
        self.quoted = b'"' + key.encode() + b'"'
        named = b"(?P<key>" + re.escape(self.quoted) + b")"
        self.anywhere = re.compile(named + _VALUE)
        self.first = re.compile(rb"\s*\{\s*" + named + _VALUE)


def _key(key: str) -> _Key:
    found = _FIELD_RES.get(key)
    if found is None:
        found = _FIELD_RES[key] = _Key(key)
    return found


def _lone_match(text: bytes, pattern: re.Pattern[bytes]) -> tuple[int, re.Match[bytes] | None]:
    """The common case at the cost of two searches: no match, or a single one, whose
    depth the brackets before it tell (-1: several matches, measure them all)."""
    first = pattern.search(text)
    if first is None:
        return 0, None
    if pattern.search(text, first.end()) is not None:
        return -1, None
    shape = _strings_dropped(_kept(text, _NOT_SHAPE, first.start()))
    if len(shape) <= _CHUNK:
        depth = shape.count(b"[") - shape.count(b"]")
    else:
        depth = _count(shape, (b"[",)) - _count(shape, (b"]",))
    return (1, first) if depth == 1 else (0, None)


def _field(raw: bytes, key: str, once: bool = False) -> re.Match[bytes] | None:
    """The last top-level match of ``key`` in the object ``raw`` (groups ``key``, ``value``);
    with ``once``, a body where it stands twice at the top level is refused (400)."""
    text = _plain(raw)
    patterns = _key(key)
    # Most often the key comes first and once: one match and one search.
    first = patterns.first.match(text)
    if first is not None and text.find(patterns.quoted, first.end()) < 0:
        return first
    if not looks_like_object(raw) or _MARK in raw:
        return None
    count, match = _lone_match(text, patterns.anywhere)
    if count >= 0:
        return match
    count, last = _top_level(text, patterns.anywhere)
    if once and count > 1:
        raise BadRequest(f"{key} appears {count} times at the top level of the body; "
                         "send it once", FIELD=key)
    return next(islice(patterns.anywhere.finditer(text), last, None)) if count else None


def _value(raw: bytes, match: re.Match[bytes] | None) -> tuple[bool, Any]:
    if match is None:
        return False, None
    token = raw[match.start("value"):match.end("value")]
    if not token:
        return True, CONTAINER
    try:
        return True, orjson.loads(token)
    except orjson.JSONDecodeError:
        return False, None  # not valid JSON: the server, which decodes it, answers 400


def peek_field(raw: bytes, key: str) -> tuple[bool, Any]:
    """A top-level field of a JSON object, read without decoding the document.

    Returns ``(found, value)``: a string, number, bool or None is decoded;
    :data:`CONTAINER` stands for an object or array value. The last top-level
    occurrence wins, as when the body is decoded. No document is built, so memory
    stays within a few copies of the body (decoding 12 MB of tiny objects takes
    hundreds of MB), and the time is linear in its size. A body that is not valid JSON
    may still yield a field: the server, which decodes it, answers 400.
    """
    return _value(raw, _field(raw, key))


def escaped_top_level_key(raw: bytes) -> bool:
    """Whether a key of the object ``raw``'s top level holds an escape (``\\``): it may
    decode to a name the bytes do not show (``"SIGN\\u0041TURE"``)."""
    if b"\\" not in raw or not looks_like_object(raw) or _MARK in raw:
        return False
    text = _plain(raw)
    return _ESCAPED_KEY.search(text) is not None and _top_level(text, _ESCAPED_KEY)[0] > 0


def route_field(raw: bytes, key: str = "SIGNATURE") -> tuple[bool, Any]:
    """:func:`peek_field` for a field that routes a request: what the bytes show must be
    what decoding reads, so a body is refused (400) when ``key`` stands twice at its
    top level, or a top-level key holds an escape."""
    match = _field(raw, key, once=True)
    if escaped_top_level_key(raw):
        raise BadRequest("a key at the top level of the body holds an escape (\\); write "
                         "the top-level keys as plain text", FIELD=key)
    return _value(raw, match)


_COMMA_AFTER = re.compile(rb"\s*,")


def cut_field(raw: bytes, key: str) -> tuple[bytes, bool, Any]:
    """``raw`` without its top-level field ``key``, and ``(found, value)`` as
    :func:`peek_field` reads them, never decoding the document.

    Only a field that stands once with a scalar value is cut; an object or array value,
    or a key standing twice, leaves ``raw`` as it is.
    """
    try:
        match = _field(raw, key, once=True)
    except BadRequest:
        return raw, False, None
    found, value = _value(raw, match)
    if match is None or not found or value is CONTAINER:
        return raw, found, value
    start, end = match.start("key"), match.end()
    comma = _COMMA_AFTER.match(raw, end)
    if comma is not None:
        end = comma.end()  # a field follows: take the comma after this one
    else:
        before = raw.rfind(b",", 0, start)  # the last field: take the comma before it
        if before >= 0 and not raw[before + 1:start].strip():
            start = before
    return raw[:start] + raw[end:], True, value
