"""Wire format shared by the gateway front and the endpoint servers."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson

from .errors import BadRequest, ServingError
from .version import __version__

JSON = "application/json"
HOSTNAME = socket.gethostname()
_DUMP_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


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


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (400 otherwise)."""
    if not raw:
        raise BadRequest("empty body: send a JSON object with a SIGNATURE field")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 with this error too.
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}")
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
