"""The gateway's routes, declared once.

Each :class:`Route` says what a path is: its methods, who may call it, what it takes,
what it answers and with which statuses. From this table the management Flask app
registers its routes (:func:`register`), ``/get_paths`` answers, the event-loop front
finds its own routes (``NATIVE``) and :mod:`.openapi` writes the OpenAPI document; a
route exists in all of them or in none.

To add a route, add one ``Route`` to :data:`ROUTES` and give its view to
:func:`register` under the route's ``view`` name. A route the manager answers needs no
view: :func:`managed` makes it from the commands of :mod:`..control_api` it forwards,
whose types are its request and its answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask

from .. import control_api as api
from ..names import NAME_RULE
from ..tenants.keys import MAX_GRACE, RATE_PATTERN
from .openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest, json_schema

Auth = Literal["admin", "metrics", "open", "data"]
Schema = dict[str, Any]

# The view of a route the manager answers: its ``commands`` say which, by method.
COMMAND = "command"
# The view of a route the event-loop front answers itself (never through Flask).
FRONT = "front"

OBJECT: Schema = {"type": "object"}
STRING: Schema = {"type": "string"}
SIGNATURE: Schema = {"type": "string", "minLength": 1,
                     "description": "the endpoint's name (its file name without .py)"}


def body(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    """A JSON object body with these properties; others are allowed."""
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter (always a string on the wire; ``schema`` says more)."""

    name: str
    schema: Schema = field(default_factory=lambda: dict(STRING))
    required: bool = False
    where: Literal["query", "path", "header"] = "query"
    description: str = ""


@dataclass(frozen=True)
class Route:
    """One gateway path: what it takes, what it answers, who may call it.

    ``auth``: ``admin`` needs the admin bearer token (and a JSON body on POST);
    ``metrics`` the admin token or the scrape token (METRICS_TOKEN);
    ``open`` needs nothing; ``data`` is the data plane: an API key (``X-API-Key`` or
    ``Authorization: Bearer``) with ``API_KEYS`` on, nothing with it off.
    ``statuses`` are the route's own; those every request may get (a malformed
    request, a full gateway...) are added by :mod:`.openapi`.
    ``bodies`` overrides the body of a status (the default: the route's ``response``
    for a success, the error body otherwise).
    """

    path: str  # Flask rule syntax: /jobs/<job_id>
    methods: tuple[str, ...]
    auth: Auth
    summary: str
    statuses: tuple[int, ...]
    view: str = COMMAND
    request: Schema | None = None  # the JSON body of a POST
    params: tuple[Param, ...] = ()
    response: Schema = field(default_factory=lambda: dict(OBJECT))
    media: str = "application/json"  # of a success
    bodies: dict[int, Schema] = field(default_factory=dict)
    description: str = ""
    # A COMMAND route's manager command by method (a GET's changes nothing).
    commands: dict[str, str] = field(default_factory=dict)
    # A streaming endpoint's answer may come as events (basic_inference_server.streams).
    streams: bool = False
    # Whether its POST changes state: each call goes to the audit trail (..audit).
    changes: bool = False
    # Its errors are OpenAI's {"error": {...}} (the /v1 routes), not ERROR and ERROR_TYPE.
    openai: bool = False

    @property
    def admin(self) -> bool:
        """Whether the route needs the admin token."""
        return self.auth == "admin"

    @property
    def shown(self) -> str:
        """The path without converters: ``/jobs/<job_id>``."""
        return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"<\1>", self.path)

    @property
    def native_handler(self) -> str:
        """The front's handler of a FRONT route (``/dashboard/events``: ``on_dashboard_events``)."""
        return "on_" + self.path.strip("/").replace("/", "_")


def managed(path: str, summary: str, statuses: tuple[int, ...], *,
            post: api.Command[Any] | None = None, get: api.Command[Any] | None = None,
            auth: Auth = "admin", params: tuple[Param, ...] = ()) -> Route:
    """A route the manager answers: ``post``'s arguments are its body, the command's
    reply its answer; ``get`` is the command of a GET."""
    methods = (("GET",) if get else ()) + (("POST",) if post else ())
    commands = {m: c.name for m, c in (("GET", get), ("POST", post)) if c is not None}
    shown = post or get
    assert shown is not None
    # A POST that answers what the GET answers reads; any other POST acts.
    return Route(path, methods, auth, summary, statuses, view=COMMAND,
                 request=post.schema() if post else None, params=params,
                 response=shown.reply, commands=commands,
                 changes=post is not None and post is not get and auth == "admin")


# A job id is 32 characters (a uuid4's hex): /jobs/dead and /jobs/requeue are not ids.
JOB_ID_PARAM = Param("job_id", {"type": "string", "minLength": 32, "maxLength": 32,
                                "pattern": "^[^/]*$"}, required=True, where="path")
JOB_ACCEPTED = body(("JOB_ID", "STATUS", "SIGNATURE", "STATUS_URL"),
                    JOB_ID=STRING, STATUS={"const": "queued"}, SIGNATURE=STRING,
                    STATUS_URL=STRING)
READINESS = body(("status", "endpoints"), status={"enum": ["ready", "not ready"]},
                 endpoints={"type": "object", "additionalProperties": STRING})
RUN_REQUEST = body(("SIGNATURE",), SIGNATURE=SIGNATURE, ASYNC={
    "type": "boolean", "description": "true: answer 202 at once and run it as a job"})
# /run reads its fields from the raw bytes: a top-level key written with an escape
# (a backslash, as a JSON encoder writes a quote, a control or a non-ASCII character)
# is refused; keys of printable ASCII but " and \ never need one.
RUN_BODY: Schema = {**RUN_REQUEST, "propertyNames": {"type": "string",
                                                     "pattern": "^[ !#-\\[\\]-~]*$"},
                    "properties": {**RUN_REQUEST["properties"], "STREAM": {
                        "type": "boolean", "description": "true: a streaming endpoint answers "
                        "Server-Sent Events (as with Accept: text/event-stream)"}}}
# The framework's envelope around an endpoint's own answer (which adds its own fields).
RUN_ANSWER = body((), ver=STRING, app_ver=STRING, time=STRING, host=STRING, server=STRING,
                  call_id={"type": "integer"}, worker_id=STRING,
                  worker_pid={"type": "integer"}, signature=STRING)

# API keys (tenants/admin.py): a key as listed, and as created (with its secret, once).
KEY = body(("KEY_ID", "TENANT"), KEY_ID=STRING, TENANT=STRING)
KEY_CREATED = body(("KEY", "KEY_ID", "TENANT"), KEY=STRING, KEY_ID=STRING, TENANT=STRING)
NAME: Schema = {"type": "string", "pattern": f"^{NAME_RULE.pattern}$"}
RATE: Schema = {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1e9},
                          {"type": "string", "pattern": RATE_PATTERN}],
                "description": "requests a second, or text: 100/minute (second, minute, hour, day)"}
BURST: Schema = {"type": "integer", "minimum": 1, "maximum": 10**9}


def _quota(unit: str) -> Schema:
    return {"type": "object", "required": [unit], "additionalProperties": False,
            "properties": {unit: {"type": "number", "exclusiveMinimum": 0, "maximum": 1e15},
                           "PER": {"enum": ["day", "month"]}}}


KEY_REQUEST: Schema = {
    **body(("TENANT",), TENANT=NAME, ENDPOINTS={"type": "array", "items": NAME},
           READ_ALL_JOBS={"type": "boolean"}, RATE=RATE, BURST=BURST,
           ENDPOINT_LIMITS={"type": "object", "propertyNames": NAME, "additionalProperties": {
               "type": "object", "required": ["RATE"], "additionalProperties": False,
               "properties": {"RATE": RATE, "BURST": BURST}}},
           MAX_CONCURRENT={"type": "integer", "minimum": 1, "maximum": 10**6},
           QUOTA={"oneOf": [_quota("REQUESTS"), _quota("UNITS"), _quota("TOKENS")]},
           NAME={"type": "string", "maxLength": 200}, TOKEN_RATE=RATE, TOKEN_BURST=BURST),
    "additionalProperties": False,
    "dependentRequired": {"BURST": ["RATE"], "TOKEN_BURST": ["TOKEN_RATE"]}}
KEY_ID: Schema = {"type": "string", "minLength": 1}
# A dashboard event's id: <state digest or ->.<newest sample ms>.<newest event ms>.
DASHBOARD_CURSOR = r"^(?:([0-9a-f]{16})|-)\.([0-9]{1,15})\.([0-9]{1,15})$"
DAY: Schema = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}

ROUTES: tuple[Route, ...] = (
    Route("/run", ("POST", "GET"), "data", "run an endpoint: body {SIGNATURE, ...}",
          (200, 202, 400, 404, 405, 409, 413, 429, 500, 502, 503, 504), view=FRONT,
          request=RUN_BODY, response=RUN_ANSWER, bodies={202: JOB_ACCEPTED}, streams=True,
          params=(Param("SIGNATURE", SIGNATURE, required=True,
                        description="GET only: the endpoint; other query fields are its inputs"),),
          description="The answer is the endpoint's own JSON plus the metadata fields "
                      "listed. What the endpoint's code raises is a 400 bad_request "
                      "from _pre_process, else a 500 endpoint_error; both carry "
                      "EXCEPTION, ERROR_MESSAGE, ERROR_FILE and ERROR_LINE. GET /run "
                      "never submits a job (405)."),
    managed("/list_servers", "endpoints with state, workers, port, errors", (200,),
            get=api.LIST_SERVERS, post=api.LIST_SERVERS),
    managed("/system_status", "memory, disk, GPU, alerts (SYSTEM_STATUS)", (200, 503),
            get=api.SYSTEM_STATUS, post=api.SYSTEM_STATUS),
    managed("/models", "model versions in the box's cache (size, last use, in use) and the "
            "MODEL of each endpoint", (200,), get=api.MODELS),
    managed("/history", "rolling window of health samples and events, and the newest of the "
            "audit trail: ?samples=N&audit=N", (200, 400), get=api.HISTORY,
            params=(Param("samples", {"type": "string", "pattern": "^[0-9]+$"},
                          description="how many samples, the newest"),
                    Param("audit", {"type": "string", "pattern": "^[0-9]+$"},
                          description="how many audit records, the newest (default 100)"))),
    managed("/notifications", "recent notifications from workers", (200,),
            get=api.NOTIFICATIONS, post=api.NOTIFICATIONS),
    Route("/get_paths", ("GET", "POST"), "open", "this list", (200,), view="get_paths",
          response=body(("AVAIL_PATHS",), AVAIL_PATHS=OBJECT)),
    Route("/openapi.json", ("GET",), "open", "this API as an OpenAPI 3.1 document", (200,),
          view="openapi", response=body(("openapi", "paths"), openapi=STRING, paths=OBJECT)),
    managed("/support_update_status",
            "where support processes report (the manager checks the caller; refusals and "
            "checks are rate-limited: 429)", (200, 400, 403, 404, 413, 415, 429, 503),
            post=api.SUPPORT_STATUS, auth="open"),
    Route("/health/live", ("GET",), "open", "200 while the gateway and its manager answer",
          (200, 503), view="live", response=body(("status",), status={"const": "alive"})),
    Route("/metrics", ("GET",), "metrics",
          "Prometheus metrics: the admin token or METRICS_TOKEN (which reads nothing else)",
          (200, 401), view="metrics", response=STRING, media="text/plain"),
    Route("/health/ready", ("GET",), "open",
          "200 when the endpoints READY_POLICY names are READY", (200, 503), view="ready",
          response=READINESS, bodies={503: READINESS}),
    Route("/dashboard", ("GET",), "open",
          "web page (asks for the admin token): endpoints, alerts, memory and GPU charts, "
          "actions", (200, 403), view="dashboard", response=STRING, media="text/html"),
    Route("/dashboard/events", ("GET",), "admin",
          "the dashboard's live state as SSE: state (endpoints, system, alerts), samples, "
          "events; Last-Event-ID resumes", (200, 400, 503), view=FRONT,
          params=(Param("Last-Event-ID", {"type": "string", "pattern": DASHBOARD_CURSOR},
                        where="header", description="resume after this event id"),),
          response=STRING, media="text/event-stream"),
    Route("/dashboard/static/<path:filename>", ("GET",), "open", "the dashboard's files",
          (200, 403, 404), view="dashboard_static", response=STRING, media="*/*",
          params=(Param("filename", required=True, where="path"),)),
    managed("/start_server", "start an endpoint: {SIGNATURE, ...settings}", (200, 400, 404, 409),
            post=api.START_SERVER),
    managed("/kill_server", "stop an endpoint: {SIGNATURE}", (200, 400, 404),
            post=api.KILL_SERVER),
    managed("/update_workers", "change NR_WORKERS: {SIGNATURE, NR_WORKERS}", (200, 400, 404),
            post=api.UPDATE_WORKERS),
    managed("/reload_server", "zero-downtime code reload: {SIGNATURE}", (200, 400, 404, 409),
            post=api.RELOAD_SERVER),
    managed("/shutdown", "drain and exit: {SIGNATURE: SAFE_KILL_SERVER_CMD}", (200, 400),
            post=api.SHUTDOWN),
    managed("/traffic", "versions and weights: GET the policies (?SIGNATURE=name: one); POST "
            "{SIGNATURE, WEIGHTS} changes an endpoint's weights (kept across restarts)",
            (200, 400, 404, 409), get=api.TRAFFIC, post=api.SET_WEIGHTS,
            params=(Param("SIGNATURE", SIGNATURE, description="one endpoint with VERSIONS"),)),
    managed("/rollout", "progressive rollout: POST {SIGNATURE, CANARY, STABLE, STEPS, DWELL_S, "
            "MIN_REQUESTS, MAX_ERROR_RATE_DELTA, MAX_P99_RATIO, P99_MARGIN_MS} starts one; GET "
            "?SIGNATURE=name shows its state and history", (200, 400, 404, 409),
            get=api.ROLLOUT_STATE, post=api.ROLLOUT,
            params=(Param("SIGNATURE", SIGNATURE, description="one endpoint with VERSIONS"),)),
    managed("/rollout/promote", "end a rollout: the canary takes all traffic now: {SIGNATURE, "
            "REASON}", (200, 400, 404, 409), post=api.ROLLOUT_PROMOTE),
    managed("/rollout/abort", "end a rollout: all traffic back to the stable version now: "
            "{SIGNATURE, REASON}", (200, 400, 404, 409), post=api.ROLLOUT_ABORT),
    Route("/jobs", ("POST",), "data", "submit an async job (as /run with ASYNC true): 202 + JOB_ID",
          (202, 400, 404, 409, 413, 429, 503), view=FRONT, request=RUN_REQUEST,
          response=JOB_ACCEPTED, params=(Param(
              "Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255,
                                  "pattern": "^[ -~]+$"}, where="header",
              description="the same key again: the same job (202, Idempotent-Replayed)"),)),
    Route("/jobs/<string(length=32):job_id>", ("GET", "DELETE"), "data",
          "GET: status, attempts, timestamps and result of a job; DELETE: cancel it (200 "
          "cancelled; 202 running, stopping; 409 already over)", (200, 202, 404, 409, 503),
          view="job_status", params=(JOB_ID_PARAM,), response=body(("STATUS",), STATUS=STRING)),
    Route("/jobs/<string(length=32):job_id>/events", ("GET",), "data",
          "a job's events as SSE: queued, running, progress, chunk, then done, failed or "
          "cancelled; Last-Event-ID resumes", (200, 400, 404, 503), view=FRONT,
          params=(JOB_ID_PARAM, Param("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,12}$"},
                                      where="header",
                                      description="resume after this event id")),
          response=STRING, media="text/event-stream"),
    Route("/jobs/dead", ("GET",), "admin", "dead letters of an endpoint: ?SIGNATURE=name",
          (200, 400, 503), view="dead_letters",
          params=(Param("SIGNATURE", SIGNATURE, required=True),
                  Param("LIMIT", {"type": "string", "pattern": "^[0-9]+$"})),
          response=body(("SIGNATURE", "DEAD_LETTERS", "COUNT"), SIGNATURE=STRING,
                        DEAD_LETTERS={"type": "array"}, COUNT={"type": "integer"})),
    Route("/jobs/requeue", ("POST",), "admin", "requeue dead letters: {SIGNATURE, JOB_ID (or all)}",
          (200, 400, 404, 503), view="requeue", changes=True,
          request=body(("SIGNATURE",), SIGNATURE=SIGNATURE, JOB_ID=STRING),
          response=body(("SIGNATURE", "REQUEUED", "COUNT"), SIGNATURE=STRING,
                        REQUEUED={"type": "array", "items": STRING}, COUNT={"type": "integer"})),
    Route("/keys", ("GET", "POST"), "admin",
          "API keys: list (?TENANT=) or create {TENANT, ENDPOINTS, RATE, BURST, ...}; the key "
          "is shown once", (200, 201, 400, 503), view="keys", request=KEY_REQUEST, changes=True,
          params=(Param("TENANT", description="GET: only this tenant's keys"),),
          response=body(("KEYS", "COUNT"), KEYS={"type": "array"}, COUNT={"type": "integer"}),
          bodies={201: KEY_CREATED}),
    Route("/keys/revoke", ("POST",), "admin", "revoke an API key: {KEY_ID}", (200, 400, 404, 503),
          view="keys_revoke", request=body(("KEY_ID",), KEY_ID=KEY_ID), response=KEY,
          changes=True),
    Route("/keys/rotate", ("POST",), "admin",
          "a new key for the same tenant; the old one works GRACE more seconds: {KEY_ID, GRACE}",
          (201, 400, 404, 409, 503), view="keys_rotate", changes=True,
          request=body(("KEY_ID",), KEY_ID=KEY_ID,
                       GRACE={"type": "number", "minimum": 0, "maximum": MAX_GRACE}),
          response=KEY_CREATED),
    Route("/usage", ("GET",), "data", "with API_KEYS: the calling key's limits, quota and spending",
          (200, 400, 401, 404, 503), view=FRONT, response=KEY),
    Route("/usage/tenants", ("GET",), "admin",
          "metering per tenant and endpoint of a day: ?DAY=YYYY-MM-DD (default today, UTC)",
          (200, 400, 503), view="usage_tenants", params=(Param("DAY", DAY),),
          response=body(("DAY", "ROWS", "COUNT"), DAY=STRING, ROWS={"type": "array"},
                        COUNT={"type": "integer"})),
    Route("/usage/tenants.csv", ("GET",), "admin", "the same as CSV: ?DAY=YYYY-MM-DD",
          (200, 400, 503), view="usage_tenants_csv", params=(Param("DAY", DAY),),
          response=STRING, media="text/csv"),
)

# The OpenAI routes (gateway/openai_front.py): requests as OpenAI's API takes them, their
# schemas written from the models that validate them.
IDEMPOTENCY = (Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255,
                                         "pattern": "^[ -~]+$"}, where="header",
                     description="the same key again: the same answer (Idempotent-Replayed)"),)
OPENAI_STATUSES = (200, 400, 401, 403, 404, 405, 409, 413, 429, 500, 502, 503, 504)
COMPLETION = body(("id", "object", "created", "model", "choices", "usage"), id=STRING,
                  object=STRING, created={"type": "integer"}, model=STRING,
                  choices={"type": "array"}, usage=OBJECT)
OPENAI_ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", ("POST",), "data",
          "OpenAI chat completions: {model, messages, max_tokens, stream, ...}",
          OPENAI_STATUSES, view=FRONT, openai=True, response=COMPLETION,
          request=json_schema(ChatRequest), params=IDEMPOTENCY),
    Route("/v1/completions", ("POST",), "data",
          "OpenAI text completions: {model, prompt, max_tokens, stream, ...}",
          OPENAI_STATUSES, view=FRONT, openai=True, response=COMPLETION,
          request=json_schema(CompletionRequest), params=IDEMPOTENCY),
    Route("/v1/embeddings", ("POST",), "data", "OpenAI embeddings: {model, input, encoding_format}",
          OPENAI_STATUSES, view=FRONT, openai=True, request=json_schema(EmbeddingRequest),
          params=IDEMPOTENCY,
          response=body(("object", "data", "model", "usage"), object={"const": "list"},
                        data={"type": "array"}, model=STRING, usage=OBJECT)),
    Route("/v1/models", ("GET",), "data", "OpenAI model list: the endpoints, versions and "
          "aliases the caller's key may call", (200, 401, 405), view=FRONT, openai=True,
          response=body(("object", "data"), object={"const": "list"}, data={"type": "array"})),
)
ROUTES += OPENAI_ROUTES

PATHS: frozenset[str] = frozenset(r.path for r in ROUTES)
# The paths whose bodies may reach MAX_REQUEST_SIZE (the others: 1 MiB at most).
DATA_PATHS: frozenset[bytes] = frozenset(r.path.encode() for r in ROUTES
                                         if r.auth == "data" and "POST" in r.methods)
# The paths the event-loop front answers without Flask, and the name of its handler
# (a path with a parameter, /jobs/<id>/events, is matched by its own handler).
NATIVE: dict[str, str] = {r.path: r.native_handler for r in ROUTES
                          if r.view == FRONT and "<" not in r.path}


def paths_listing() -> dict[str, Any]:
    """``/get_paths``' AVAIL_PATHS: path -> methods, admin flag, summary."""
    return {r.shown: {"methods": list(r.methods), "admin": r.admin, "info": r.summary}
            for r in ROUTES}


def register(app: Flask, views: dict[str, Callable[..., Any]],
             command_view: Callable[[Route], Callable[..., Any]]) -> None:
    """Add every route the Flask app answers, each with its view.

    ``views`` maps a route's ``view`` name to its function (a Blueprint's routes name
    it ``blueprint.function``); manager commands get ``command_view(route)``. A view
    without a route, or a route without a view, is an error at start.
    """
    unused = set(views)
    for route in ROUTES:
        if route.view == FRONT:
            continue
        func = command_view(route) if route.view == COMMAND else views[route.view]
        unused.discard(route.view)
        app.add_url_rule(route.path, endpoint=route.view if route.view != COMMAND else route.path,
                         view_func=func, methods=list(route.methods))
    if unused:
        raise RuntimeError(f"views without a route in the API table: {sorted(unused)}")
