"""The gateway front: routes ``/run`` by ``SIGNATURE``; the rest goes to the manager.

``/run`` is served by a plain WSGI handler ahead of Flask: it is on every request's
path and needs no routing, sessions or templates. Everything else is a Flask app.
The front keeps no state but the route table, so the manager can restart it freely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from .. import protocol
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unavailable,
)
from ..queues import JobsSpec
from . import metrics
from .jobs import JobsFront
from .loadboard import LoadBoard
from .management import READY, build_management_app
from .routes import RouteTable
from .upstream import Upstream

StartResponse = Callable[..., Any]
access_log = logging.getLogger("bis.access")
WAITABLE = ("STARTING", "RESTARTING")
# Values of a request's ASYNC field that make it a job (a query string carries text).
ASYNC_TRUE = (True, "true", "True", "1")


@dataclass
class FrontSpec:
    """What the manager tells the front."""

    routes: str
    control: str
    workers: int = 2
    threads: int = 32
    max_request_size: int = 64 * 1024 * 1024
    admin_token: str | None = None
    allowed_hosts: list[str] | None = None  # config ALLOWED_HOSTS
    server_name: str = "basic_inference_server"
    app_version: str = "0.0.0"
    stop_timeout: float = 30
    access_log: bool = True
    jobs: dict[str, Any] | None = None  # queues.JobsSpec


class Front:
    """WSGI application of the gateway front."""

    def __init__(self, spec: FrontSpec) -> None:
        self.spec = spec
        self.routes = RouteTable(spec.routes)
        self.upstream = Upstream(LoadBoard(rows=spec.workers))
        self.jobs = JobsFront(JobsSpec(**spec.jobs) if spec.jobs else None)
        self.flask = build_management_app(self)

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

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"
