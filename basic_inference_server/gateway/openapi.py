"""The gateway's OpenAPI 3.1 document, written from the route table (:mod:`.api_table`).

Served at ``/openapi.json`` and checked in as ``docs/openapi.json``
(``python scripts/update_api_docs.py`` rewrites it; a unit test compares them). The
error kinds are every one the code can answer (:mod:`.error_kinds`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .. import errors, streams
from ..version import __version__
from .api_table import ROUTES, Route, Schema
from .error_kinds import kinds_by_status

# Statuses any request may get: a malformed request (400), a body over the limit (413,
# checked before routing), a full gateway (503).
EVERY_REQUEST = (400, 413, 503)
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 415: "Unsupported Media Type",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
META: dict[str, Schema] = {
    "ver": {"type": "string", "description": "the framework's version"},
    "app_ver": {"type": "string", "description": "the gateway's APP_VERSION"},
    "time": {"type": "string", "description": "when the answer was made"},
    "host": {"type": "string", "description": "the answering machine's host name"},
    "server": {"type": "string", "description": "the gateway's SERVER_NAME"},
}
SECURITY_SCHEMES = {
    "adminToken": {"type": "http", "scheme": "bearer",
                   "description": "the admin token (ADMIN_TOKEN, BIS_ADMIN_TOKEN, "
                                  "BIS_ADMIN_TOKEN_FILE, or the admin_token file the "
                                  "gateway writes into its cache folder)"},
    "metricsToken": {"type": "http", "scheme": "bearer",
                     "description": "the scrape token (METRICS_TOKEN): reads /metrics only"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "a tenant's API key on the data plane, with API_KEYS on "
                              "(or as Authorization: Bearer); see docs/tenants.md"},
}

# The events of a streamed answer (:mod:`basic_inference_server.streams`), by name.
EVENT_DATA: dict[str, Schema] = {
    streams.CHUNK: {"type": "object",
                    "description": "one item the endpoint's _predict yielded, after "
                                   "_post_process"},
    streams.DONE: {"type": "object", "required": ["CHUNKS"],
                   "description": "the last event of a stream that ended well",
                   "properties": {"CHUNKS": {"type": "integer", "minimum": 0,
                                             "description": "how many chunks were sent"},
                                  "USAGE": {"type": "number", "description":
                                            "the units the endpoint reported (not with "
                                            "API_KEYS on: charged to the key)"}, **META}},
    streams.ERROR: {"$ref": "#/components/schemas/Error"},
}
EVENT_SCHEMAS = {name: f"Stream{name.capitalize()}" for name in EVENT_DATA}
STREAM_ANSWER = (
    "A streaming endpoint answers events (chunk..., then done or error, ids 1, 2, ...), "
    "each as it comes: Server-Sent Events with Accept: text/event-stream or STREAM true "
    "(id: n, event: chunk|done|error, data: the event's JSON object, a blank line); one "
    "JSON object a line with Accept: application/x-ndjson ({event, id, data}); else (and "
    "always on GET) the chunks gathered into one JSON answer, {CHUNKS: [...], <done's "
    "fields>}. An error before the first chunk is an error answer; after it, an error "
    "event. An endpoint that does not stream answers JSON whatever was asked.")


def stream_schemas() -> dict[str, Schema]:
    """The data of each event, the NDJSON line and the gathered answer."""
    lines = [{"type": "object", "required": ["event", "id", "data"],
              "properties": {"event": {"const": name}, "id": {"type": "integer", "minimum": 1},
                             "data": {"$ref": f"#/components/schemas/{ref}"}}}
             for name, ref in EVENT_SCHEMAS.items()]
    gathered = {**EVENT_DATA[streams.DONE], "description": "a stream's chunks gathered",
                "properties": {**EVENT_DATA[streams.DONE]["properties"], "CHUNKS": {
                    "type": "array", "items": {"$ref": "#/components/schemas/StreamChunk"}}}}
    return {**{EVENT_SCHEMAS[name]: data for name, data in EVENT_DATA.items()},
            "StreamEvent": {"oneOf": lines}, "StreamGathered": gathered}


def _success(route: Route, status: int, method: str) -> dict[str, Any]:
    schema = route.bodies.get(status, route.response)
    answer: dict[str, Any] = {"description": REASONS[status],
                              "content": {route.media: {"schema": schema}}}
    if not (route.streams and status == 200):
        return answer
    gathered = {"anyOf": [schema, {"$ref": "#/components/schemas/StreamGathered"}]}
    answer["content"] = {route.media: {"schema": gathered}}
    if method == "POST":  # a GET gets the chunks gathered
        answer["description"] = f"{REASONS[status]}. {STREAM_ANSWER}"
        answer["content"].update({
            streams.SSE_TYPE: {"schema": {"type": "string", "description":
                                          "events: id, event and data (one JSON object) "
                                          "lines, each event ended by a blank line"}},
            streams.NDJSON_TYPE: {"schema": {"$ref": "#/components/schemas/StreamEvent"}}})
    return answer


# Who may call a route, by its ``auth`` (any one of the schemes listed; ``{}``: none,
# as the data plane with API_KEYS off).
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"adminToken": []}], "metrics": [{"adminToken": []}, {"metricsToken": []}],
    "data": [{}, {"apiKey": []}]}


# The error body of the OpenAI routes (gateway/openai_answers.py).
OPENAI_ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}


def error_kinds() -> dict[int, list[str]]:
    """``ERROR_TYPE`` values per status: every kind the code can answer."""
    return kinds_by_status()


def statuses(route: Route) -> list[int]:
    """Every status the route may answer: its own and those its kind of route adds."""
    extra = set(EVERY_REQUEST)
    if route.admin or route.auth == "data":  # data: a missing or wrong key, a key's scope
        extra.update((401, 403))
        if "POST" in route.methods:
            extra.add(415)
    return sorted(set(route.statuses) | extra)


def _error_schema(kinds: list[str]) -> Schema:
    return {"allOf": [{"$ref": "#/components/schemas/Error"},
                      {"properties": {"ERROR_TYPE": {"enum": kinds}}}]}


def _error_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"},
                                       "description": "the scheme to use: Bearer"}
    schema = {"$ref": f"#/components/schemas/Error{status}"}
    answer: dict[str, Any] = {"description": REASONS.get(status, "Error"),
                              "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _operation(route: Route, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.path).rstrip("_"),
        "summary": route.summary,
        "security": SECURITY.get(route.auth, []),
        "tags": [route.auth],
    }
    if route.description:
        op["description"] = route.description
    params = [p for p in route.params if p.where in ("path", "header") or method == "GET"]
    if params:
        op["parameters"] = [{"name": p.name, "in": p.where, "required": p.required,
                             "schema": p.schema, **({"description": p.description}
                                                    if p.description else {})}
                            for p in params]
    if method == "POST" and (route.request is not None or route.admin):
        op["requestBody"] = {"required": route.request is not None or route.admin,
                             "content": {"application/json": {
                                 "schema": route.request or {"type": "object"}}}}
    responses: dict[str, Any] = {}
    for status in statuses(route):
        if status < 300:
            responses[str(status)] = _success(route, status, method)
        elif route.openai:  # (the connection's own refusals keep the gateway's shape)
            responses[str(status)] = {
                "description": REASONS[status],
                "content": {"application/json": {"schema": {"anyOf": [
                    {"$ref": "#/components/schemas/OpenAIError"},
                    {"$ref": f"#/components/schemas/Error{status}"}]}}}}
        elif status in route.bodies:
            error = {"$ref": f"#/components/schemas/Error{status}"}
            responses[str(status)] = {
                "description": REASONS[status],
                "content": {"application/json": {"schema": {"anyOf": [route.bodies[status],
                                                                      error]}}}}
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    op["responses"] = responses
    return op


def openapi_path(route: Route) -> str:
    """The route's path as OpenAPI writes it: ``/jobs/{job_id}``."""
    return re.sub(r"<(\w+)>", r"{\1}", route.shown)


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every gateway route."""
    kinds = error_kinds()
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths[openapi_path(route)] = {m.lower(): _operation(route, m) for m in route.methods}
    used = sorted({s for r in ROUTES for s in statuses(r) if s >= 300})
    every_kind = sorted({k for names in kinds.values() for k in names})
    return {
        "openapi": "3.1.0",
        "info": {"title": "basic_inference_server gateway", "version": __version__,
                 "description": "Every answer is JSON (but /metrics, /dashboard and its "
                                "files) and carries the metadata fields ver, app_ver, "
                                "time, host and server. Every error carries ERROR (a "
                                "message) and ERROR_TYPE, but on the /v1 routes (OpenAI's "
                                "API), whose errors are OpenAI's {error: {message, type, "
                                "param, code}}. Routes tagged admin need the "
                                "admin token; their POST bodies must be application/json. "
                                "The route tagged metrics takes the admin token or the "
                                "scrape token (METRICS_TOKEN)."},
        "paths": paths,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "headers": {"RetryAfter": {"description": "seconds before trying again",
                                       "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
            "schemas": {
                "Error": {"type": "object", "required": ["ERROR", "ERROR_TYPE"],
                          "properties": {"ERROR": {"type": "string"},
                                         "ERROR_TYPE": {"enum": every_kind}, **META}},
                **{f"Error{status}": _error_schema(kinds.get(
                    status, [errors.kind_for_status(status)])) for status in used},
                "OpenAIError": OPENAI_ERROR,
                **stream_schemas()},
            "responses": {f"E{status}": _error_response(status) for status in used},
        },
    }


@lru_cache(maxsize=1)
def document_text() -> str:
    """The document as checked in: sorted keys, two-space indents, a final newline."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"
