"""Local IPC with the manager over Unix sockets.

* control socket (stream): one JSON request line, one JSON reply line, then close.
  The gateway front uses it for the management API.
* notify socket (datagrams): fire-and-forget events from endpoint servers and
  their workers (ready, failed, notifications). Never blocks the sender.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from .events import Event

MAX_MESSAGE = 1 << 20


class ControlUnavailable(ConnectionError):
    """The manager did not answer on its control socket."""


def control_call(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the manager and return its reply."""
    data = json.dumps(request).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise ControlUnavailable(f"manager not reachable on {path}: {exc}") from exc
    raw = b"".join(chunks)
    if not raw:
        raise ControlUnavailable(f"manager closed {path} without a reply")
    reply: dict[str, Any] = json.loads(raw)
    return reply


class Notifier:
    """Sends events to the manager's notify socket; losing one is never an error."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        if path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    def send(self, event: Event, **fields: Any) -> None:
        """Send ``event`` with ``fields`` (what each event carries: :class:`.events.Event`)."""
        if self._sock is None or self.path is None:
            return
        payload = json.dumps({"event": event, **fields}, default=str).encode()
        try:
            self._sock.sendto(payload[:MAX_MESSAGE], self.path)
        except OSError:
            # The manager is gone or its queue is full: events are advisory.
            pass


# Reserved argument keys: the front adds the HTTP peer of a /support_update_status call,
# which the manager checks against the support process's sockets.
PEER_ADDR = "__peer_addr__"
PEER_PORT = "__peer_port__"


def peer_args(environ: dict[str, Any]) -> dict[str, Any]:
    """The peer of an HTTP request (WSGI environ) under the reserved keys."""
    return {PEER_ADDR: environ.get("REMOTE_ADDR"), PEER_PORT: environ.get("REMOTE_PORT")}
