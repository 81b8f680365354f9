"""Common start-up of the processes the manager spawns (front and endpoint servers)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gunicorn import glogging

from .logger import setup_logging
from .procutil import adopt_listeners, die_with_parent


def child_main(prog: str, serve: Callable[[dict[str, Any]], None],
               argv: list[str] | None = None) -> int:
    """Parse ``--spec-fd N --parent PID --fds N,M``, arm die-with-parent, then serve.

    The spec is read from the inherited file descriptor N (see
    :func:`~basic_inference_server.manager.children.spawn`), so it never shows on a
    command line.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--spec-fd", type=int, required=True,
                        help="inherited file descriptor holding the process spec as JSON")
    parser.add_argument("--parent", type=int, default=None, help="pid to die with")
    parser.add_argument("--fds", default="", help="inherited listening sockets")
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with_parent(signal.SIGKILL, expected_parent=args.parent)
    spec = read_spec(args.spec_fd)
    adopt_listeners(args.fds)
    setup_logging()
    sys.argv = [sys.argv[0]]  # gunicorn parses sys.argv: keep it from reading ours
    serve(spec)
    return 0


# gunicorn's ``logger_class`` setting for our gunicorn masters (front and servers).
GUNICORN_LOGGER = "basic_inference_server.childproc.GunicornLogger"


class GunicornLogger(glogging.Logger):
    """gunicorn's own log lines (``gunicorn.error``, ``gunicorn.access``) through the root
    logger's handler, so they take the same format as ours: one JSON object a line with
    ``BIS_LOG_JSON=1``, passwords in URLs masked (gunicorn's ``logger_class``)."""

    def setup(self, cfg: Any) -> None:
        """Send gunicorn's error and access logs to the root logger."""
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers[:] = []
            logger.propagate = True


def configure_gunicorn(cfg: Any, *, proc_name: str, worker_class: str, workers: int,
                       keepalive: float, timeout: float, graceful_timeout: float,
                       **own: Any) -> None:
    """Set a gunicorn master's settings (``cfg``): what every master of the tree shares,
    then ``own``, its hooks and its other settings.

    Shared: gunicorn logs through our logging, workers take dense slots (``pre_fork``),
    and no control socket is opened (the manager steers the masters by signals;
    gunicorn's default socket path would be one for every master of the user).
    """
    settings: dict[str, Any] = {
        "workers": workers,
        "worker_class": worker_class,
        "keepalive": keepalive,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "control_socket_disable": True,
        "proc_name": proc_name,
        "accesslog": None,
        "errorlog": "-",
        "logger_class": GUNICORN_LOGGER,
        "loglevel": os.environ.get("BIS_LOG_LEVEL", "info").lower(),
        "pre_fork": take_slot,
        **own,
    }
    for key, value in settings.items():
        cfg.set(key, value)


def read_spec(fd: int) -> dict[str, Any]:
    """Read and close the spec file descriptor (before the listeners move to 3, 4, ...)."""
    with os.fdopen(fd, "rb") as f:
        spec: dict[str, Any] = json.loads(f.read())
    return spec


def take_slot(server: Any, worker: Any) -> None:
    """gunicorn ``pre_fork``: give the new worker the lowest free slot number.

    Slots stay dense across respawns (worker i -> GPU i mod n, row i of the front's
    load board), unlike gunicorn's ever-growing worker ages.
    """
    used = {getattr(w, "bis_slot", -1) for w in server.WORKERS.values()}
    slot = 0
    while slot in used:
        slot += 1
    worker.bis_slot = slot
