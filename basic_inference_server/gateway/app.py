"""The gateway front: routes ``/run`` by ``SIGNATURE``; the rest goes to the manager.

``/run`` is served by a plain WSGI handler ahead of Flask: it is on every request's
path and needs no routing, sessions or templates. Everything else is a Flask app.
The front keeps no state but the route table, so the manager can restart it freely.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from .. import protocol
from ..errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    Unavailable,
)
from ..flask_errors import install_json_errors
from ..ipc import ControlUnavailable, control_call
from ..queues import JobsSpec
from . import metrics
from .dashboard import install_dashboard
from .jobs import JobsFront, install_job_routes
from .loadboard import LoadBoard
from .routes import RouteTable
from .upstream import Upstream

StartResponse = Callable[..., Any]
access_log = logging.getLogger("bis.access")
READY = "READY"
WAITABLE = ("STARTING", "RESTARTING")
SHUTDOWN_CMD = "SAFE_KILL_SERVER_CMD"
# Values of a request's ASYNC field that make it a job (a query string carries text).
ASYNC_TRUE = (True, "true", "True", "1")

# path -> (methods, needs admin rights, description); /get_paths lists this table.
API: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "/run": (("POST", "GET"), False, "run an endpoint: body {SIGNATURE, ...}"),
    "/list_servers": (("GET", "POST"), False, "endpoints with state, workers, port, errors"),
    "/system_status": (("GET", "POST"), False, "memory, disk, GPU, alerts (SYSTEM_STATUS)"),
    "/history": (("GET",), False, "rolling window of health samples and events: ?samples=N"),
    "/notifications": (("GET", "POST"), False, "recent notifications from workers"),
    "/get_paths": (("GET", "POST"), False, "this list"),
    "/support_update_status": (("POST",), False, "where support processes report"),
    "/health/live": (("GET",), False, "200 while the gateway and its manager answer"),
    "/metrics": (("GET",), False, "Prometheus metrics"),
    "/health/ready": (("GET",), False, "200 when every started endpoint is READY"),
    "/dashboard": (("GET",), False, "web page: endpoints, alerts, memory and GPU charts, actions"),
    "/start_server": (("POST",), True, "start an endpoint: {SIGNATURE, ...settings}"),
    "/kill_server": (("POST",), True, "stop an endpoint: {SIGNATURE}"),
    "/update_workers": (("POST",), True, "change NR_WORKERS: {SIGNATURE, NR_WORKERS}"),
    "/reload_server": (("POST",), True, "zero-downtime code reload: {SIGNATURE}"),
    "/shutdown": (("POST",), True, "drain and exit: {SIGNATURE: SAFE_KILL_SERVER_CMD}"),
    "/jobs": (("POST",), False, "submit an async job (as /run with ASYNC true): 202 + JOB_ID"),
    "/jobs/<id>": (("GET",), False, "status, attempts, timestamps and result of a job"),
    "/jobs/dead": (("GET",), True, "dead letters of an endpoint: ?SIGNATURE=name"),
    "/jobs/requeue": (("POST",), True, "requeue dead letters: {SIGNATURE, JOB_ID (or all)}"),
}


@dataclass
class FrontSpec:
    """What the manager tells the front."""

    routes: str
    control: str
    workers: int = 2
    threads: int = 32
    max_request_size: int = 64 * 1024 * 1024
    admin_token: str | None = None
    server_name: str = "basic_inference_server"
    app_version: str = "0.0.0"
    stop_timeout: float = 30
    access_log: bool = True
    jobs: dict[str, Any] | None = None  # queues.JobsSpec


def is_loopback(addr: str | None) -> bool:
    try:
        return ipaddress.ip_address((addr or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def check_admin(environ: dict[str, Any], token: str | None) -> None:
    """Management calls: loopback callers, or anyone presenting the admin token."""
    header = environ.get("HTTP_AUTHORIZATION")
    if header is not None:
        scheme, _, given = header.partition(" ")
        if not token or scheme.lower() != "bearer" or not hmac.compare_digest(given, token):
            raise Unauthorized("invalid admin token")
        return
    if not is_loopback(environ.get("REMOTE_ADDR")):
        raise Forbidden("management calls are accepted from loopback only; configure "
                        "ADMIN_TOKEN and send 'Authorization: Bearer <token>' to call remotely")


class Front:
    """WSGI application of the gateway front."""

    def __init__(self, spec: FrontSpec) -> None:
        self.spec = spec
        self.routes = RouteTable(spec.routes)
        self.upstream = Upstream(LoadBoard(rows=spec.workers))
        self.jobs = JobsFront(JobsSpec(**spec.jobs) if spec.jobs else None)
        self.flask = self._build_flask()

    # -- helpers ------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return protocol.base_meta(self.spec.server_name, self.spec.app_version)

    def _error(self, err: ServingError, start_response: StartResponse) -> Iterable[bytes]:
        body = protocol.error_body(err, self.meta())
        start_response(_status_line(err.status),
                       [("Content-Type", protocol.JSON), ("Content-Length", str(len(body))),
                        *err.headers()])
        return [body]

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        limit = self.spec.max_request_size
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        if length:
            try:
                size = int(length)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if size > limit:
                raise PayloadTooLarge(f"body of {size} bytes is over the limit of {limit} bytes",
                                      MAX_REQUEST_SIZE=limit)
            return bytes(stream.read(size))
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes",
                                  MAX_REQUEST_SIZE=limit)
        return bytes(data)

    def _resolve(self, name: str) -> dict[str, Any]:
        """The route of a READY endpoint, or the error to answer with."""
        route = self.routes.get(name)
        if route is None or route["state"] != READY:
            # The cached table may be 50 ms old: before an error, read the current one (an
            # endpoint /start_server has just started must not be unknown or STOPPED).
            route = self.routes.get(name, fresh=True)
        if route is None:
            raise NotFound(f"unknown SIGNATURE {name!r}", AVAIL_SERVERS=self.routes.names())
        if route["state"] == READY:
            return route
        if route["state"] in WAITABLE and not self.routes.table().get("no_startup_wait", True):
            deadline = time.monotonic() + float(route["timeout"])
            while time.monotonic() < deadline and route["state"] in WAITABLE:
                # Poll the route file (a stat) until the endpoint is ready, has failed
                # (no use waiting for a model that did not load), or time is up.
                time.sleep(0.02)
                route = self.routes.get(name, fresh=True) or route
                if route["state"] == READY:
                    return route
        raise Unavailable(
            f"endpoint {name} is {route['state']}"
            + (f": {route['last_error']}" if route.get("last_error") else ""),
            retry_after=route.get("retry_after", 1), SIGNATURE=name, STATE=route["state"])

    # -- WSGI ---------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/run":
            return self.run(environ, start_response)
        if path == "/jobs":
            if environ["REQUEST_METHOD"] != "POST":
                return self._error(MethodNotAllowed(f"{environ['REQUEST_METHOD']} is not allowed on "
                                                    "/jobs; POST a job, GET /jobs/<id>"), start_response)
            return self.run(environ, start_response, as_job=True)
        return self.flask(environ, start_response)  # type: ignore[no-any-return]

    def run(self, environ: dict[str, Any], start_response: StartResponse,
            as_job: bool = False) -> Iterable[bytes]:
        """``/run``: validate, route by SIGNATURE, forward, pass the answer through.

        With ``"ASYNC": true`` (or on ``POST /jobs``) the request becomes a job instead.
        """
        started = time.perf_counter()
        label = "-"  # the endpoint label until a valid SIGNATURE is read
        try:
            method = environ["REQUEST_METHOD"]
            if method == "POST":
                raw = self._read_body(environ)
                body = protocol.parse_body(raw)
            elif method == "GET":
                body = dict(parse_qsl(environ.get("QUERY_STRING", "")))
                raw = protocol.dumps(body)
            else:
                raise MethodNotAllowed(f"{method} is not allowed on /run; use POST")
            name = protocol.signature_of(body)
            label = name
            if as_job or body.get("ASYNC") in ASYNC_TRUE:
                route = self.routes.get(name) or self.routes.get(name, fresh=True)
                return self.jobs.submit(name, body, route, self.meta(), start_response)
            route = self._resolve(name)
            gauge = metrics.IN_FLIGHT.labels(name)
            gauge.inc()
            try:
                resp = self.upstream.forward(route, name, raw, environ.get("HTTP_X_CUSTOMER_ID"))
            finally:
                gauge.dec()
        except ServingError as err:
            if isinstance(err, NotFound):
                label = "unknown"  # one label for every unknown SIGNATURE: bounded cardinality
            metrics.REQUESTS.labels(label, str(err.status)).inc()
            return self._error(err, start_response)
        elapsed = time.perf_counter() - started
        metrics.REQUESTS.labels(label, str(resp.status)).inc()
        metrics.LATENCY.labels(label).observe(elapsed)
        if self.spec.access_log:
            # One line per request; under BIS_LOG_JSON=1 the fields are JSON keys too.
            access_log.info("%s %d %.2f ms worker %s", label, resp.status, elapsed * 1000,
                            resp.worker, extra={"access": {
                                "endpoint": label, "status": resp.status,
                                "latency_ms": round(elapsed * 1000, 2), "worker": resp.worker}})
        start_response(_status_line(resp.status),
                       [*resp.headers, ("Content-Length", str(len(resp.body)))])
        return [resp.body]

    # -- management (Flask) ---------------------------------------------------------
    def _build_flask(self) -> Flask:
        app = Flask("bis-gateway")
        front = self

        def reply(status: int, body: dict[str, Any], headers: list[tuple[str, str]] = ()) -> Response:  # type: ignore[assignment]
            return Response(protocol.dumps({**body, **front.meta()}), status=status,
                            headers=list(headers), mimetype=protocol.JSON)

        def args_of() -> dict[str, Any]:
            if request.method == "GET":
                return request.args.to_dict()
            raw = request.get_data(cache=False)
            return protocol.parse_body(raw) if raw else {}

        def forward(cmd: str, args: dict[str, Any]) -> Response:
            try:
                answer = control_call(front.spec.control, {"cmd": cmd, "args": args})
            except ControlUnavailable as exc:
                raise Unavailable(f"the gateway manager is not answering: {exc}",
                                  retry_after=1) from None
            status = int(answer["status"])
            body = answer["body"]
            if cmd == "system_status" and status == 200:
                body["QUEUES"] = front.jobs.status(front.routes.names())
            return reply(status, body, [("Retry-After", "1")] if status == 503 else [])

        def make_view(path: str, admin: bool) -> Callable[[], Response]:
            cmd = path.strip("/")

            def view() -> Response:
                if admin:
                    check_admin(request.environ, front.spec.admin_token)
                args = args_of()
                if path == "/shutdown" and args.get("SIGNATURE") != SHUTDOWN_CMD:
                    raise BadRequest(f"shutdown needs {{\"SIGNATURE\": \"{SHUTDOWN_CMD}\"}}")
                return forward(cmd, args)

            return view

        for path, (methods, admin, _desc) in API.items():
            if path in ("/run", "/get_paths", "/metrics", "/dashboard") \
                    or path.startswith(("/health/", "/jobs")):
                continue
            app.add_url_rule(path, endpoint=path, view_func=make_view(path, admin),
                             methods=list(methods))

        @app.route("/get_paths", methods=["GET", "POST"])
        def get_paths() -> Response:
            return reply(200, {"AVAIL_PATHS": {p: {"methods": list(m), "admin": a, "info": d}
                                               for p, (m, a, d) in API.items()}})

        @app.get("/metrics")
        def prometheus() -> Response:
            try:
                body = control_call(front.spec.control, {"cmd": "metrics", "args": {}})["body"]
            except ControlUnavailable:
                body = {}
            queues = front.jobs.collector(front.routes.names())
            return Response(metrics.render(body.get("SERVERS", {}), body.get("HEALTH"), queues),
                            mimetype=CONTENT_TYPE_LATEST)

        @app.get("/health/live")
        def live() -> Response:
            # Alive means the control plane answers too: a stuck manager restarts nothing,
            # so an orchestrator should restart the container.
            try:
                control_call(front.spec.control, {"cmd": "ping", "args": {}}, timeout=2.0)
            except ControlUnavailable as exc:
                raise Unavailable(f"the gateway manager is not answering: {exc}",
                                  retry_after=1) from None
            return reply(200, {"status": "alive"})

        @app.get("/health/ready")
        def ready() -> Response:
            states = {n: r["state"] for n, r in front.routes.table()["endpoints"].items()}
            waiting = {n: s for n, s in states.items() if s not in (READY, "STOPPED")}
            status = 503 if waiting else 200
            headers = [("Retry-After", "1")] if waiting else []
            return reply(status, {"status": "ready" if status == 200 else "not ready",
                                  "endpoints": states}, headers)

        install_dashboard(app)
        install_job_routes(app, front.jobs, reply,
                           lambda: check_admin(request.environ, front.spec.admin_token))
        install_json_errors(app, reply, "on the gateway; see /get_paths")

        return app


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"
