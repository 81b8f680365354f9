"""Talking to a test gateway's manager directly, on its control and notify sockets.

The front forwards every management call to the control socket; sending there skips
the front's own checks, so a test reaches every command's input validation.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

from tests.conftest import Gateway


def run_dir(gw: Gateway) -> Path:
    match = re.search(r"run dir (\S+)", gw.log_text())
    assert match, gw.log_tail()
    return Path(match.group(1))


def control_raw(gw: Gateway, data: bytes, timeout: float = 10.0) -> dict[str, Any] | None:
    """Send raw bytes as one control request; the decoded reply, or None if none came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(run_dir(gw) / "control.sock"))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    return json.loads(raw) if raw else None


def control(gw: Gateway, cmd: Any, args: Any) -> dict[str, Any] | None:
    return control_raw(gw, json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")


def notify(gw: Gateway, data: bytes) -> None:
    """One datagram on the manager's notify socket (where servers report events)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, str(run_dir(gw) / "notify.sock"))


def core_pids(gw: Gateway) -> dict[str, Any]:
    """The manager, front, supervisor, and each endpoint's server and worker pids."""
    body = gw.servers()
    out: dict[str, Any] = {"manager": gw.pid, **{k: body["GATEWAY"][k]
                                                for k in ("pid", "front_pid", "supervisor_pid")}}
    for name, info in body["SERVERS"].items():
        out[name] = (info["pid"], tuple(info["worker_pids"]))
    return out
