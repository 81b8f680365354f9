"""The gateway front under gunicorn: ``GATEWAY_WORKERS`` event-loop processes.

Each worker (see :mod:`.worker`) serves every connection on one event loop, with
``GATEWAY_THREADS`` threads for the blocking management calls and job submissions.
"""

from __future__ import annotations

import signal
from typing import Any

from gunicorn.app.base import BaseApplication

from ..childproc import configure_gunicorn
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
        """gunicorn's settings of the front: its workers, timeouts and hooks."""
        configure_gunicorn(
            self.cfg, proc_name="bis-gateway",
            worker_class="basic_inference_server.gateway.worker.FrontWorker",
            workers=self.spec.workers, keepalive=self.spec.keepalive_timeout, timeout=60,
            graceful_timeout=self.spec.stop_timeout,
            # The front runs no user code: load it once in the master, fork ready workers.
            preload_app=True,
            post_fork=self._post_fork,
            child_exit=lambda _server, worker: mark_dead(worker.pid))

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
