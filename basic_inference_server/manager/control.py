"""The manager's control socket: one JSON request line in, one JSON reply line out.

A request ``{"cmd": NAME, "args": {...}}`` runs the handler ``cmd_NAME`` of the
manager; every reply carries an HTTP status and a body, which the front passes on.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..ipc import MAX_MESSAGE

log = logging.getLogger(__name__)

# ERROR_TYPE of the manager's error answers, by HTTP status.
ERROR_TYPES = {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict",
               413: "payload_too_large", 500: "internal_error", 503: "unavailable"}

Reply = tuple[int, dict[str, Any]]
Handler = Callable[[dict[str, Any]], Reply]


def error(status: int, message: str, **extra: Any) -> Reply:
    """An error answer of a command: ``ERROR`` and ``ERROR_TYPE``, plus ``extra``."""
    return status, {"ERROR": message, "ERROR_TYPE": ERROR_TYPES[status], **extra}


def json_depth(value: Any, limit: int) -> int:
    """Containers nested in a decoded JSON value; counting stops past ``limit``."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (dict, list))]
        if not level:
            break
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


class ControlServer:
    """Answers the control socket with the ``cmd_*`` methods of ``target``."""

    def __init__(self, target: object) -> None:
        self.target = target

    def accept(self, listener: socket.socket) -> None:
        """Serve one connection (the listener is non-blocking; a client has 2 s)."""
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(2.0)
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) <= MAX_MESSAGE:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            reply = self.handle_request(buf)
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except OSError as exc:
            log.warning("control connection failed: %s", exc)
        except Exception:  # noqa: BLE001 - no command may stop the manager
            log.exception("control request failed")
        finally:
            conn.close()

    def handle_request(self, raw: bytes) -> dict[str, Any]:
        """One raw control request line -> its reply; bad framing is a 400."""
        request: Any = None
        if len(raw) > MAX_MESSAGE:
            status, body = error(413, f"control request over {MAX_MESSAGE} bytes")
        else:
            try:
                request = json.loads(raw)
            except (ValueError, RecursionError):
                pass
            if isinstance(request, dict):
                return self.handle_command(request.get("cmd", ""), request.get("args") or {})
            status, body = error(400, "a control request is one JSON object")
        return {"status": status, "body": body}

    def handle_command(self, cmd: Any, args: Any) -> dict[str, Any]:
        """Run one management command; the reply carries an HTTP status and a body.

        Every command runs behind this boundary: an exception is logged with its
        traceback and answered 500; the manager keeps running.
        """
        handler: Handler | None = (getattr(self.target, f"cmd_{cmd}", None)
                                   if isinstance(cmd, str) and cmd.isidentifier() else None)
        if handler is None:
            status, body = error(404, f"unknown command {str(cmd)[:100]!r}")
        elif not isinstance(args, dict):
            status, body = error(400, "the arguments must be a JSON object")
        else:
            try:
                status, body = handler(args)
            except Exception as exc:  # noqa: BLE001 - the boundary: log, answer 500, go on
                log.exception("command %s failed", cmd)
                status, body = error(500, f"command {cmd} failed: {type(exc).__name__}: {exc}")
        return {"status": status, "body": body}
