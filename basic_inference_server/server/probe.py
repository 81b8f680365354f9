"""A worker's health probe: answered by a thread of its own, never behind a request.

Each worker runs one request at a time, so a probe sent to ``/health`` would wait
behind a long ``_predict`` and a busy worker would look hung. This listener answers
from a separate thread: it keeps answering while the model computes (Python switches
threads every few milliseconds, and native code such as torch releases the GIL), and
stops answering only when the whole process is stuck: stopped (SIGSTOP), swapped out
for good, or deadlocked holding the GIL. The supervisor reads one JSON line per
connection (:func:`basic_inference_server.supervisor.probe.ping`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time


class ProbeListener:
    """Answers each connection on a Unix socket with the worker's pid and uptime."""

    def __init__(self, path: str, **identity: object) -> None:
        self.path = path
        self.identity = identity
        self.started = time.monotonic()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._sock.bind(path)
        self._sock.listen(16)

    def start(self) -> None:
        """Answer probes in a daemon thread."""
        threading.Thread(target=self._serve, name="bis-probe", daemon=True).start()

    def _serve(self) -> None:
        pid = os.getpid()
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed: the worker is stopping
            with conn:
                reply = {"pid": pid, "up_s": round(time.monotonic() - self.started, 1),
                         **self.identity}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    continue
