"""The gateway's management plane and its read-only API, as a Flask app.

Everything but ``/run`` and ``POST /jobs`` (the data path, in :mod:`.app`) lands here:
the control commands forwarded to the manager, health, metrics, the dashboard and the
job inspection routes. None of it is on the hot path.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from .. import protocol
from ..errors import BadRequest, Forbidden, Unauthorized, Unavailable
from ..flask_errors import install_json_errors
from ..ipc import ControlUnavailable, control_call, peer_args
from . import metrics
from .dashboard import install_dashboard
from .jobs import install_job_routes
from .readiness import waiting_for

if TYPE_CHECKING:
    from .app import Front

READY = "READY"
SHUTDOWN_CMD = "SAFE_KILL_SERVER_CMD"

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
    "/health/ready": (("GET",), False, "200 when the endpoints READY_POLICY names are READY"),
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


def build_management_app(front: Front) -> Flask:
    """The Flask app of every gateway route but the data path."""
    app = Flask("bis-gateway")

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
            if path == "/support_update_status":
                args = {**args, **peer_args(request.environ)}
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
        table = front.routes.table()
        states = {n: r["state"] for n, r in table["endpoints"].items()}
        waiting = waiting_for(states, table.get("ready_policy", "all"))
        status = 503 if waiting else 200
        headers = [("Retry-After", "1")] if waiting else []
        return reply(status, {"status": "ready" if status == 200 else "not ready",
                              "endpoints": states}, headers)

    install_dashboard(app)
    install_job_routes(app, front.jobs, reply,
                       lambda: check_admin(request.environ, front.spec.admin_token))
    install_json_errors(app, reply, "on the gateway; see /get_paths")

    return app
