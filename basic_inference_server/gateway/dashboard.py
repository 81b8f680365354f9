"""The dashboard page: static HTML, CSS and JS over the gateway's own JSON API.

The page holds no logic the API does not have: it polls ``/list_servers``,
``/system_status`` and ``/history`` and draws them (charts by Chart.js, vendored under
``static/vendor`` so the page works without internet access), and its buttons call the
management paths, which apply the usual admin rule.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

STATIC = Path(__file__).with_name("static")


def install_dashboard(app: Flask) -> None:
    """Serve ``/dashboard`` and its files under ``/dashboard/static/``."""
    bp = Blueprint("dashboard", __name__, static_folder=str(STATIC),
                   static_url_path="/dashboard/static")

    @bp.get("/dashboard")
    def page() -> Response:
        return send_from_directory(STATIC, "dashboard.html", max_age=0)

    app.register_blueprint(bp)
