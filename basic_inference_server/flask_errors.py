"""The one place Flask apps (front and endpoint servers) turn errors into JSON answers."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request

from .errors import MethodNotAllowed, NotFound, ServingError

Reply = Callable[[int, dict, list[tuple[str, str]]], Response]


def install_json_errors(app: Flask, reply: Reply, where: str) -> None:
    """Answer ServingError, unknown paths (404) and wrong methods (405) as JSON."""

    @app.errorhandler(ServingError)
    def serving_error(err: ServingError) -> Response:
        return reply(err.status, err.to_dict(), err.headers())

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return serving_error(NotFound(f"no route {request.path} {where}"))

    @app.errorhandler(405)
    def bad_method(_exc: Exception) -> Response:
        return serving_error(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
