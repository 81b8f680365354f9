"""What reaches the manager unasked: signals, and its servers' events.

Signal handlers only wake the loop (``signal.set_wakeup_fd``); the loop reads the
signal numbers here and acts. The servers' workers send their events as datagrams
to the notify socket; each event about an endpoint is one transition of its state.
"""

from __future__ import annotations

import json
import logging
import selectors
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..ipc import MAX_MESSAGE
from .control import json_depth
from .state import Change, Endpoint, State

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger(__name__)

# A worker's notification is kept and shown by /notifications: bounded, so that
# nothing stored can break a later answer (orjson writes at most 254 levels).
NOTIFICATION_MAX_DEPTH = 32

# The notify socket's events about one endpoint -> the transition each one is.
EndpointEvent = Callable[[Endpoint, dict[str, Any], float], Change]
ENDPOINT_EVENTS: dict[Event, EndpointEvent] = {
    Event.WORKER_READY: lambda ep, msg, now: ep.worker_ready(
        msg.get("generation"), int(msg["pid"]), msg.get("socket"), now),
    Event.WORKER_EXIT: lambda ep, msg, _now: ep.worker_exit(msg.get("generation"),
                                                            int(msg["pid"])),
    Event.LOAD_FAILED: lambda ep, msg, _now: ep.load_failed(msg.get("generation"),
                                                            msg.get("error")),
    Event.NWORKERS: lambda ep, msg, _now: ep.workers_reported(msg.get("generation"),
                                                             int(msg["value"])),
}


class Inbox:
    """The notify socket and the signals' wake-up pipe, read on the core's loop."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._wake_r, self._wake_w = socket.socketpair()

    def open(self, sel: selectors.BaseSelector) -> None:
        """Bind the notify socket and route the signals to the loop."""
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(self.core.paths.notify)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        notify.setblocking(False)
        sel.register(notify, selectors.EVENT_READ, self.read_notify)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        sel.register(self._wake_r, selectors.EVENT_READ, self.read_signals)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # The handler does nothing: the wakeup fd carries the signal number to the loop.
            signal.signal(sig, lambda _s, _f: None)

    def close(self) -> None:
        """Stop routing the signals; close the wake-up pipe."""
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()

    def read_signals(self, sock: socket.socket) -> None:
        """SIGTERM/SIGINT: drain and stop (a second one kills); SIGHUP: reload all."""
        core = self.core
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if core.shutting_down:
                    log.warning("second stop signal: killing every child now")
                    core.kill_all()
                else:
                    log.info("received %s: draining and shutting down", signal.Signals(signum).name)
                    core.begin_shutdown()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: reloading every endpoint")
                for ep in core.endpoints.values():
                    if ep.state == State.READY and not ep.is_support:
                        core.reload_endpoint(ep)

    def read_notify(self, sock: socket.socket) -> None:
        """Every event waiting on the notify socket; a bad one is logged and dropped."""
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            try:
                msg = json.loads(data)
                if isinstance(msg, dict):
                    self.on_event(msg)
            except Exception:  # noqa: BLE001 - no event may stop the manager
                log.exception("bad event on the notify socket: %.200r", data)

    def on_event(self, msg: dict[str, Any]) -> None:
        """Dispatch one notify-socket event; an unknown one is logged and dropped."""
        core = self.core
        try:
            event = Event(msg.get("event"))
        except ValueError:
            log.warning("unknown event %.100r dropped", msg.get("event"))
            return
        if event is Event.NOTIFICATION:
            if json_depth(msg, NOTIFICATION_MAX_DEPTH) > NOTIFICATION_MAX_DEPTH:
                log.warning("notification nested deeper than %d levels dropped",
                            NOTIFICATION_MAX_DEPTH)
            else:
                core.notifications.append(msg)
            return
        name = msg.get("endpoint")
        ep = core.endpoints.get(name) if isinstance(name, str) else None
        if ep is not None:
            core.apply(ep, ENDPOINT_EVENTS[event](ep, msg, core.clock()))
            self._placement(ep.name, event, msg)

    def _placement(self, name: str, event: Event, msg: dict[str, Any]) -> None:
        """A worker placed by memory is READY (NVML shows its memory: its claim ends)
        or exited (its replacement claims again)."""
        generation = msg.get("generation")
        if not isinstance(generation, int):
            return
        key = (name, generation)
        if event is Event.WORKER_READY:
            gpu = msg.get("gpu")
            self.core.placer.worker_ready(key, int(msg["pid"]), gpu if isinstance(gpu, int) else None)
        elif event is Event.WORKER_EXIT:
            self.core.placer.worker_exit(key, int(msg["pid"]))
