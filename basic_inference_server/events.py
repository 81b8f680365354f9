"""The event names of the notify socket, at the bottom of the import graph.

Endpoint servers and their workers send these datagrams to the manager
(:class:`~basic_inference_server.ipc.Notifier`); this module imports nothing of the
library, so that a worker process loads only what it needs to send them.
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    """Datagrams of the notify socket (endpoint servers and workers to the manager)."""

    WORKER_READY = "worker_ready"  # pid, slot, socket, generation
    WORKER_EXIT = "worker_exit"  # pid, generation
    NWORKERS = "nworkers"  # value, generation: gunicorn's worker count changed
    LOAD_FAILED = "load_failed"  # pid, error, generation
    NOTIFICATION = "notification"  # worker_id, notif, msg, info, time (FlaskWorker)
