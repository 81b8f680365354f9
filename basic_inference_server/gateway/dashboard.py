"""The dashboard page: static HTML, CSS and JS over the gateway's own JSON API.

The page holds no logic the API does not have: it reads one live stream,
``/dashboard/events`` (:mod:`.dashboard_events`: what ``/list_servers``,
``/system_status`` and ``/history`` answer, sent as it changes), and draws it (charts by
Chart.js, vendored under ``static/vendor`` so the page works without internet access);
its buttons call the management paths. Both need the admin token: the page asks for
it, keeps it in the tab's ``sessionStorage`` (never a cookie, so no other site's page
can ride on it) and sends it as ``Authorization: Bearer`` on every call; the stream is
read with ``fetch()``, since ``EventSource`` sends no header (the token would go in the
URL).

The page and its files carry ``X-Frame-Options: DENY`` and a CSP that allows nothing
but this origin's own files (no inline script, no framing): its buttons cannot be
clickjacked, and injected markup could not run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, request, send_from_directory

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def dashboard_views(app: Flask, check_host: Callable[[], None]) -> dict[str, Callable[..., Response]]:
    """The views of ``/dashboard`` and its files (their routes: the API table).

    ``check_host`` runs before each of them (the Host allow-list: DNS rebinding), and
    their answers, errors included, carry :data:`SECURITY_HEADERS`.
    """
    views = ("dashboard", "dashboard_static")

    @app.before_request
    def host_allowed() -> None:
        if request.endpoint in views:
            check_host()

    @app.after_request
    def secure(resp: Response) -> Response:
        if request.endpoint in views:
            resp.headers.update(SECURITY_HEADERS)
        return resp

    def page() -> Response:
        return send_from_directory(STATIC, "dashboard.html", max_age=0)

    def static_file(filename: str) -> Response:
        return send_from_directory(STATIC, filename)

    return dict(zip(views, (page, static_file), strict=True))
