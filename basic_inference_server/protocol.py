"""Wire format shared by the gateway front and the endpoint servers."""

from __future__ import annotations

import re
import socket
import time
from itertools import accumulate
from operator import sub
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
_RUNS = re.compile(rb"\[+|\]+")
_SHAPE = bytes.maketrans(b"{}", b"[]")
_NOT_SHAPE = bytes(b for b in range(256) if b not in b'[]{}"')


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


def parse_body(raw: bytes, max_size: int | None = None) -> dict[str, Any]:
    """Decode a request body that must be a JSON object: the one JSON policy.

    400 unless it is a JSON object nested at most :data:`MAX_JSON_DEPTH` levels;
    413 when it is longer than ``max_size`` bytes (where the caller has a limit).
    """
    if max_size is not None and len(raw) > max_size:
        raise PayloadTooLarge(f"body of {len(raw)} bytes is over the limit of {max_size} bytes",
                              MAX_REQUEST_SIZE=max_size)
    if not raw:
        raise BadRequest("empty body: send a JSON object with a SIGNATURE field")
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
    return time.strftime("%Y-%m-%d %H:%M:%S")


def base_meta(server_name: str, app_version: str) -> dict[str, Any]:
    """Metadata every answer carries (the original's ``ver``, ``time`` and host info)."""
    return {"ver": __version__, "app_ver": app_version, "time": now_text(),
            "host": HOSTNAME, "server": server_name}


def error_body(err: ServingError, meta: dict[str, Any] | None = None) -> bytes:
    body = err.to_dict()
    if meta:
        body.update(meta)
    return dumps(body)


# -- routing without parsing: the front reads SIGNATURE (and ASYNC) from the raw bytes ----
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SCALAR = rb'\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*"|true|false|null|-?[0-9][0-9.eE+-]*|[\[{])'
_FIELD_RES: dict[str, re.Pattern[bytes]] = {}
_OBJECT_START = re.compile(rb"\s*\{")
# Marks a top-level field whose value is an object or an array.
CONTAINER = object()


def looks_like_object(raw: bytes) -> bool:
    """Whether a body starts as a JSON object does (no copy of the body is made)."""
    return _OBJECT_START.match(raw) is not None


def _brackets(raw: bytes, start: int, stop: int) -> int:
    return (raw.count(b"{", start, stop) + raw.count(b"[", start, stop)
            - raw.count(b"}", start, stop) - raw.count(b"]", start, stop))


def peek_field(raw: bytes, key: str) -> tuple[bool, Any]:
    """A top-level field of a JSON object, read without decoding the document.

    Returns ``(found, value)``: a string, number, bool or None is decoded;
    :data:`CONTAINER` stands for an object or array value. The last top-level
    occurrence wins, as when the body is decoded. Strings are skipped by a regex and
    brackets between them counted by ``bytes.count``, in one pass: no document is
    built, so memory stays within the body's size (decoding 12 MB of tiny objects
    takes hundreds of MB). A body that is not valid JSON may still yield a field: the
    server, which decodes it, answers 400.
    """
    pattern = _FIELD_RES.get(key)
    if pattern is None:
        pattern = _FIELD_RES[key] = re.compile(b'"' + re.escape(key.encode()) + b'"' + _SCALAR)
    if not looks_like_object(raw):
        return False, None
    found: tuple[bool, Any] = (False, None)
    strings = _STRING.finditer(raw)
    string = next(strings, None)
    depth = pos = 0
    for match in pattern.finditer(raw):
        stop = match.start()
        inside = False
        while string is not None and string.start() < stop:
            if string.end() > stop:
                inside = True  # this "key" is text inside a string value
                break
            depth += _brackets(raw, pos, string.start())
            pos = string.end()
            string = next(strings, None)
        if inside:
            continue
        depth += _brackets(raw, pos, stop)
        pos = stop
        if depth != 1:
            continue
        token = match.group(1)
        try:
            found = (True, CONTAINER if token in (b"[", b"{") else orjson.loads(token))
        except orjson.JSONDecodeError:
            continue
    return found
