"""The gateway's management plane and its read-only API, as a Flask app.

Everything but ``/run`` and ``POST /jobs`` (the data path, in :mod:`.app`) lands here:
the control commands forwarded to the manager, health, metrics, the dashboard and the
job inspection routes. None of it is on the hot path.

Who may call what: every route marked admin in :data:`.api_table.ROUTES` needs ``Authorization:
Bearer <admin token>``, from loopback too (a same-host proxy, sidecar or browser tab is
loopback as well); its POSTs take only ``application/json`` bodies (a cross-site form
cannot send that without a preflight); and its ``Host`` header, like the dashboard's,
must be one the gateway answers to (DNS rebinding). Open: ``/get_paths`` (this static
table), the probes ``/health/live`` and ``/health/ready``, the dashboard's static page
(it fetches its data with the token), ``GET /jobs/<id>`` (the id is the capability) and
``/support_update_status`` (the manager checks that the caller is the support process).
``/metrics`` names tenants and their usage: it takes the admin token or the scrape token
(METRICS_TOKEN), which opens nothing else.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from .. import protocol
from ..audit import Actor, token_id
from ..control_api import COMMANDS, LIST_SERVERS, METRICS, PING, SYSTEM_STATUS, Command
from ..errors import (
    Forbidden,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    kind_for_status,
)
from ..flask_body import decoded_body, json_body
from ..flask_errors import install_json_errors
from ..ipc import ControlUnavailable, control_call, peer_args
from ..tenants.admin import key_views
from ..tenants.metering import QuotaUse
from . import metrics
from .api_table import ROUTES, Route, paths_listing, register
from .dashboard import dashboard_views
from .jobs import job_views
from .openapi import document_text
from .readiness import table_waiting
from .traffic_metrics import TrafficCollector

if TYPE_CHECKING:
    from .app import Front

# Management bodies are a few settings: far less than MAX_REQUEST_SIZE, which is for /run.
MAX_MANAGEMENT_BODY = 1024 * 1024
# A refused admin attempt: no or a wrong token (401), a Host not answered to (403).
REFUSED = (401, 403)
# Routes whose POST changes state (audited), and routes behind a credential.
CHANGING = frozenset(r.path for r in ROUTES if r.changes)
GUARDED = frozenset(r.path for r in ROUTES if r.auth in ("admin", "metrics"))

def _wire_bytes(text: str) -> bytes:
    """A WSGI header value as the bytes that came on the wire (PEP 3333: latin-1)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def check_admin(environ: dict[str, Any], token: str | None, also: str | None = None,
                what: str = "management calls need", name: str = "admin token") -> None:
    """Management calls: ``Authorization: Bearer <token>``, whoever the caller is.

    ``token`` None is the INSECURE_NO_ADMIN_AUTH development mode: no check at all.
    ``also``: a second token accepted here (METRICS_TOKEN on /metrics). Every token is
    compared, constant-time over bytes, so any header value is a clean 401.
    """
    if token is None:
        return
    header = environ.get("HTTP_AUTHORIZATION")
    if not header:
        raise Unauthorized(f"{what} 'Authorization: Bearer <{name}>' "
                           "(ADMIN_TOKEN, BIS_ADMIN_TOKEN, or the admin_token file the "
                           "gateway writes into its cache folder)")
    scheme, _, given = header.partition(" ")
    wire = _wire_bytes(given)
    matches = [hmac.compare_digest(wire, t.encode("utf-8")) for t in (token, also) if t]
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized(f"invalid {name}")


def host_name(header: str) -> str:
    """The name or address of a ``Host`` header, without port, brackets or final dot."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@functools.cache
def own_names() -> frozenset[str]:
    """``localhost`` and this machine's host names (read once, at the first need)."""
    return frozenset({"localhost", socket.gethostname().lower(), socket.getfqdn().lower()})


def host_allowed(header: str | None, allowed: list[str] | None) -> bool:
    """Whether a request's ``Host`` is one this gateway answers to (ALLOWED_HOSTS).

    IP literals, ``localhost`` and this machine's names always are: a DNS rebinding
    page reaches the gateway under a name its author controls, never under these.
    ``allowed`` adds names, ``*.domain`` (any name under domain) or ``*`` (any).
    No ``Host`` at all (HTTP/1.0) is no browser's request, so it passes.
    """
    if header is None:
        return True
    name = host_name(header)
    try:
        ipaddress.ip_address(name.partition("%")[0])
        return True
    except ValueError:
        pass
    if name in own_names():
        return True
    for entry in allowed or ():
        entry = entry.lower().rstrip(".")
        if entry in ("*", name) or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


def check_host(environ: dict[str, Any], allowed: list[str] | None) -> None:
    """Refuse (403) a management call whose Host is not one this gateway answers to."""
    header = environ.get("HTTP_HOST")
    if not host_allowed(header, allowed):
        raise Forbidden(f"Host {header!r} is not one this gateway answers to; add it to "
                        "ALLOWED_HOSTS (names, '*.domain' or '*')")


def check_json_post(environ: dict[str, Any]) -> None:
    """Admin POSTs carry JSON: a cross-site form can post text/plain, never this."""
    if environ.get("REQUEST_METHOD") != "POST":
        return
    mimetype = (environ.get("CONTENT_TYPE") or "").partition(";")[0].strip().lower()
    if mimetype != protocol.JSON:
        raise UnsupportedMediaType(
            f"management POSTs take 'Content-Type: {protocol.JSON}', got {mimetype or 'none'!r}")


def _auditor(front: Front) -> Callable[[Response], Response]:
    """The hook that records every answered call of a route that changes state, and
    counts refused attempts on every guarded route (:mod:`..audit`)."""
    def audited(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else None
        address = request.environ.get("REMOTE_ADDR", "")
        if rule in GUARDED and response.status_code in REFUSED:
            front.refusals.count(address, request.path)
        elif rule in CHANGING and request.method == "POST":
            args = decoded_body()
            if args is None:  # refused before its body was read, or not JSON
                args = {"...": f"{request.content_length or 0} bytes, not decoded"}
            error = response.get_json(silent=True) if response.status_code >= 400 else None
            token = front.spec.admin_token
            tid = token_id(token) if token else None
            front.audit.admin_call(
                Actor(credential="admin_token" if tid else "none", token_id=tid, address=address),
                "POST", request.path, args,
                response.status_code, error.get("ERROR_TYPE") if isinstance(error, dict) else None,
                request.environ.get("bis.request_id"))
        return response

    return audited


def build_management_app(front: Front) -> Flask:
    """The Flask app of every gateway route but the data path."""
    app = Flask("bis-gateway")
    # Flask refuses longer bodies (413) before reading them; parse_body checks again.
    app.config["MAX_CONTENT_LENGTH"] = MAX_MANAGEMENT_BODY

    def reply(status: int, body: dict[str, Any], headers: list[tuple[str, str]] = ()) -> Response:  # type: ignore[assignment]
        return Response(protocol.dumps({**body, **front.meta()}), status=status,
                        headers=list(headers), mimetype=protocol.JSON)

    def admin_only() -> None:
        """The checks of every admin route, in order: Host, token, body type."""
        check_host(request.environ, front.spec.allowed_hosts)
        check_admin(request.environ, front.spec.admin_token)
        check_json_post(request.environ)

    # What the front adds to a command's answer from what it holds itself.
    additions: dict[str, Callable[[], dict[str, Any]]] = {
        SYSTEM_STATUS.name: lambda: {"QUEUES": front.jobs.status(front.routes.names())},
        # Counted by every front process: read from the files /metrics merges.
        LIST_SERVERS.name: lambda: {"SHADOW": metrics.shadow_summary(),
                                    "FAIR_SHARES": front.dispatcher.fair.shares()},
    }

    def forward(command: Command[Any], args: dict[str, Any]) -> Response:
        """One command to the manager, which checks its arguments; its answer as HTTP."""
        if command.peer:
            args = {**args, **peer_args(request.environ)}
        try:
            answer = control_call(front.spec.control, command.request(args))
        except ControlUnavailable as exc:
            raise Unavailable(f"the gateway manager is not answering: {exc}",
                              retry_after=1) from None
        status = int(answer["status"])
        body = answer["body"]
        if status >= 400 and "ERROR_TYPE" not in body:
            body["ERROR_TYPE"] = kind_for_status(status)
        if status == 200 and command.name in additions:
            body.update(additions[command.name]())
        return reply(status, body, [("Retry-After", "1")] if status == 503 else [])

    def command_view(route: Route) -> Callable[[], Response]:
        def view() -> Response:
            if route.admin:
                admin_only()
            # Flask answers HEAD with the GET's view.
            method = "GET" if request.method == "HEAD" else request.method
            command = COMMANDS[route.commands[method]]
            if method == "GET":
                return forward(command, command.from_query(request.args.to_dict()))
            return forward(command, json_body(MAX_MANAGEMENT_BODY))

        return view

    listing = {"AVAIL_PATHS": paths_listing()}

    def get_paths() -> Response:
        return reply(200, listing)

    # Made here, in the master before the workers fork, and shared by them: built at a
    # first call it held that worker's event loop for a quarter of a second and grew it
    # by 10 MiB (the error kinds are read from the source).
    openapi = document_text().encode()

    def openapi_json() -> Response:
        return Response(openapi, mimetype=protocol.JSON)

    def prometheus() -> Response:
        # Tenant names and usage: the admin token or the scrape token, never anonymous.
        check_admin(request.environ, front.spec.admin_token, front.spec.metrics_token,
                    "/metrics needs", "admin token or METRICS_TOKEN")
        try:
            body = control_call(front.spec.control, METRICS.request({}))["body"]
        except ControlUnavailable:
            body = {}
        queues = front.jobs.collector(front.routes.names())
        traffic = TrafficCollector(body.get("TRAFFIC_STATE"))
        extra = [queues, traffic, metrics.InFlight(front.board, front.routes.names()),
                 metrics.LedgerGauges(body.get("LEDGER"))]
        gate = front.key_gate
        if gate is not None and gate.spec.enabled:
            extra.append(QuotaUse(gate.store, tenant_labels=front.spec.metrics_tenant_labels))
        return Response(metrics.render(body.get("SERVERS", {}), body.get("HEALTH"), *extra,
                                       tenant_labels=front.spec.metrics_tenant_labels),
                        mimetype=CONTENT_TYPE_LATEST)

    def live() -> Response:
        # Alive means the control plane answers too: a stuck manager restarts nothing,
        # so an orchestrator should restart the container.
        try:
            control_call(front.spec.control, PING.request({}), timeout=2.0)
        except ControlUnavailable as exc:
            raise Unavailable(f"the gateway manager is not answering: {exc}",
                              retry_after=1) from None
        return reply(200, {"status": "alive"})

    def ready() -> Response:
        table = front.routes.table()
        states = {n: r.state.value for n, r in table.endpoints.items()}
        waiting = table_waiting(table)
        status = 503 if waiting else 200
        headers = [("Retry-After", "1")] if waiting else []
        return reply(status, {"status": "ready" if status == 200 else "not ready",
                              "endpoints": states}, headers)

    views = {"get_paths": get_paths, "openapi": openapi_json, "metrics": prometheus,
             "live": live, "ready": ready,
             **dashboard_views(app, lambda: check_host(request.environ, front.spec.allowed_hosts)),
             **job_views(front.jobs, reply, admin_only),
             **key_views(lambda: front.key_store(), reply, admin_only,
                         lambda: front.priorities.classes)}
    register(app, views, command_view)
    install_json_errors(app, reply, "on the gateway; see /get_paths")
    app.after_request(_auditor(front))

    return app
