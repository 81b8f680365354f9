"""The supervisor's side of a worker probe (see :mod:`basic_inference_server.server.probe`)."""

from __future__ import annotations

import socket
import time
from enum import Enum


class Outcome(str, Enum):
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
