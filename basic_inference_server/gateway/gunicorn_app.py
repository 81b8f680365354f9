"""The gateway front under gunicorn: ``GATEWAY_WORKERS`` event-loop processes.

Each worker (see :mod:`.worker`) serves every connection on one event loop, with
``GATEWAY_THREADS`` threads for the blocking management calls and job submissions.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from gunicorn.app.base import BaseApplication

from ..childproc import GUNICORN_LOGGER, take_slot
from ..contracts import FrontSpec
from ..procutil import die_with_parent
from ..wire.worker import mark_dead
from .app import Front


class GatewayFront(BaseApplication):
    """The gunicorn application of the front: its settings, and the front it serves."""

    def __init__(self, spec: FrontSpec) -> None:
        self.spec = spec
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "workers": self.spec.workers,
            "worker_class": "basic_inference_server.gateway.worker.FrontWorker",
            "keepalive": self.spec.keepalive_timeout,
            "graceful_timeout": self.spec.stop_timeout,
            "timeout": 60,
            # The front runs no user code: load it once in the master, fork ready workers.
            "preload_app": True,
            "control_socket_disable": True,
            "proc_name": "bis-gateway",
            "accesslog": None,
            "errorlog": "-",
            "logger_class": GUNICORN_LOGGER,
            "loglevel": os.environ.get("BIS_LOG_LEVEL", "info").lower(),
            "pre_fork": take_slot,
            "post_fork": self._post_fork,
            "child_exit": lambda _server, worker: mark_dead(worker.pid),
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    @staticmethod
    def _post_fork(server: Any, worker: Any) -> None:
        die_with_parent(signal.SIGKILL)
        server.app.front().board.claim_row(worker.bis_slot)

    def load(self) -> Front:
        """gunicorn's hook: build the loaded "application", here the front."""
        return Front(self.spec)

    def front(self) -> Front:
        """The front, built once (gunicorn keeps what :meth:`load` built and calls it
        "wsgi": the front is no WSGI app)."""
        front = self.wsgi()
        assert isinstance(front, Front)
        return front
