"""The supervisor's side of a worker probe (see :mod:`basic_inference_server.server.probe`),
and the health probe of a remote endpoint's URLs."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from enum import Enum
from typing import Any

from ..traffic.remote import parse_url


class Outcome(str, Enum):
    """What one health probe of a worker found."""

    OK = "ok"
    # Connected (the kernel queued us) but no answer in time: the process is stuck.
    TIMEOUT = "timeout"
    # Nobody listens any more: the worker exited; its server respawns it, not a hang.
    GONE = "gone"


def ping(path: str, timeout: float) -> Outcome:
    """Probe one worker; a stuck process is told from a dead one."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return Outcome.GONE
        except OSError:
            return Outcome.TIMEOUT
        data = b""
        try:
            while not data.endswith(b"\n"):
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    # Closed unanswered: the process died while we waited.
                    return Outcome.GONE
                data += chunk
        except OSError:
            return Outcome.TIMEOUT
    return Outcome.OK


def probe_url(url: str, timeout: float, path: str = "/health/live") -> dict[str, Any]:
    """``GET <url><path>`` of a remote endpoint's URL: ``{ok, error, latency_ms}``; only
    a 200 is an answer (a gateway whose manager is gone answers 503 there)."""
    remote = parse_url(url)
    started = time.monotonic()
    conn: http.client.HTTPConnection
    if remote.tls:
        conn = http.client.HTTPSConnection(remote.host, remote.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(remote.host, remote.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": remote.authority})
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        text = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return {"ok": False, "error": text, "latency_ms": None}
    finally:
        conn.close()
    latency = round((time.monotonic() - started) * 1000, 2)
    if resp.status != 200:
        return {"ok": False, "error": f"GET {path} answered {resp.status}", "latency_ms": latency}
    return {"ok": True, "error": None, "latency_ms": latency}
