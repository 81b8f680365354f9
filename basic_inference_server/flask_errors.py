"""The one place Flask apps (front and endpoint servers) turn errors into JSON answers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .errors import MethodNotAllowed, NotFound, ServingError, kind_for_status

Reply = Callable[[int, dict, list[tuple[str, str]]], Response]
log = logging.getLogger(__name__)


def install_json_errors(app: Flask, reply: Reply, where: str) -> None:
    """Answer every error as JSON with ``ERROR`` and ``ERROR_TYPE``, whatever its status.

    ServingError carries its own status and kind; werkzeug's HTTP errors (404, 405, 413
    from ``MAX_CONTENT_LENGTH``...) get the kind of their status; anything else is a 500
    whose details go to the log, not to the caller. An app may register its own
    ``Exception`` handler after this one to say more.
    """

    @app.errorhandler(ServingError)
    def serving_error(err: ServingError) -> Response:
        return reply(err.status, err.to_dict(), err.headers())

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return serving_error(NotFound(f"no route {request.path} {where}"))

    @app.errorhandler(405)
    def bad_method(exc: Exception) -> Response:
        return serving_error(MethodNotAllowed(f"{request.method} is not allowed on {request.path}",
                                              allow=getattr(exc, "valid_methods", None) or ()))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return reply(status, {"ERROR": exc.description or exc.name,
                              "ERROR_TYPE": kind_for_status(status)}, headers)

    @app.errorhandler(Exception)
    def unexpected(_exc: Exception) -> Response:
        log.exception("unexpected error while answering %s %s", request.method, request.path)
        return reply(500, {"ERROR": f"internal error {where}", "ERROR_TYPE": "internal_error"}, [])
