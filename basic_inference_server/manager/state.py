"""What the manager knows of each endpoint, and the route table it publishes."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..config import EndpointConfig
from .children import BACKOFF_FIRST, Child, backoff

# A server that ran this long before dying is not in a crash loop: restart at once.
STABLE_AFTER = 30.0
# Requests allowed to wait per worker slot by default (MAX_IN_FLIGHT).
IN_FLIGHT_FACTOR = 32


class State(str, Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    READY = "READY"
    RESTARTING = "RESTARTING"
    FAILED = "FAILED"
    CRASHLOOP = "CRASHLOOP"
    STOPPING = "STOPPING"


@dataclass
class Endpoint:
    """One configured endpoint (server or support process) and its lifecycle."""

    config: EndpointConfig
    port: int | None = None
    socket_path: str | None = None
    listeners: list[socket.socket] = field(default_factory=list)
    state: State = State.STOPPED
    child: Child | None = None
    draining: list[Child] = field(default_factory=list)
    pending: Child | None = None
    generation: int = 0
    ready_pids: set[int] = field(default_factory=set)
    worker_sockets: dict[int, str] = field(default_factory=dict)
    target_workers: int = 1
    reported_workers: int | None = None
    last_error: str | None = None
    # Why the server last died, kept after it recovers (last_error is cleared then).
    last_exit: dict[str, Any] | None = None
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    ready_since: float | None = None
    support_status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def backoff(self) -> float:
        """Delay before the next start, doubling with each failure in a row, capped at 60 s.

        A first crash restarts at once (0 s), a first failed load waits 1 s; the second
        failure in a row waits 2 s, the third 4 s, then 8 s ... (so 0, 2, 4, 8 s for a
        crash loop and 1, 2, 4, 8 s for a load that keeps failing; ``Service``, for the
        front and the supervisor, waits 0, 1, 2, 4 s).
        """
        if self.failures <= 1:
            return 0.0 if self.state == State.RESTARTING else BACKOFF_FIRST
        return backoff(self.failures - 1)

    def describe(self) -> dict[str, Any]:
        """The endpoint as /list_servers shows it."""
        s = self.config.settings
        return {
            "state": self.state.value,
            "kind": "support" if self.config.is_support else "server",
            "port": self.port,
            "host": s["HOST"],
            "nr_workers": self.target_workers,
            "workers_ready": len(self.ready_pids),
            "pid": self.child.pid if self.child else None,
            "worker_pids": sorted(self.ready_pids),
            "generation": self.generation,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_exit": self.last_exit,
            "uptime_s": round(time.monotonic() - self.ready_since, 1) if self.ready_since else None,
            "retry_in_s": (round(max(0.0, self.restart_at - time.monotonic()), 1)
                           if self.restart_at else None),
            "description": s["DESCRIPTION"],
            "module": self.config.module_name,
        }

    def route(self) -> dict[str, Any]:
        """What the front needs to forward a request."""
        return {
            "state": self.state.value,
            "socket": self.socket_path,
            "workers": sorted(self.worker_sockets.values()),
            "timeout": self.config.settings["TIMEOUT"],
            "retry_on_crash": self.config.settings["RETRY_ON_CRASH"],
            "last_error": self.last_error,
            "retry_after": self.retry_after(),
            "max_queue_depth": self.config.settings["MAX_QUEUE_DEPTH"],
            "max_queue_bytes": self.config.settings["MAX_QUEUE_BYTES"],
            "max_in_flight": self.max_in_flight(),
        }

    def max_in_flight(self) -> int:
        """The front's bulkhead: ``MAX_IN_FLIGHT``, else what the live workers can hold
        (times ``MAX_BATCH_SIZE``) with room for 32 waiting per slot."""
        s = self.config.settings
        if s["MAX_IN_FLIGHT"] is not None:
            return int(s["MAX_IN_FLIGHT"])
        return max(1, len(self.ready_pids)) * int(s["MAX_BATCH_SIZE"]) * IN_FLIGHT_FACTOR

    def retry_after(self) -> float:
        if self.restart_at is not None:
            return max(1.0, self.restart_at - time.monotonic())
        return 1.0


def write_routes(path: Path, endpoints: dict[str, Endpoint], settings: dict[str, Any]) -> None:
    """Publish the route table atomically (readers never see half a file)."""
    table = {
        "endpoints": {n: e.route() for n, e in endpoints.items() if not e.config.is_support},
        "no_startup_wait": settings["NO_STARTUP_WAIT"],
        "ready_policy": settings["READY_POLICY"],
        "written_at": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)
