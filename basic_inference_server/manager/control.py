"""The manager's control socket: one JSON request line in, one JSON reply line out.

A request ``{"cmd": NAME, "args": {...}}`` names a command of
:data:`..control_api.COMMANDS`; its arguments are checked against the command's type,
then its handler runs (a method marked :func:`handles`). Every reply carries an HTTP
status and a body, which the front passes on.
"""

from __future__ import annotations

import json
import logging
import queue
import selectors
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..control_api import COMMANDS, Command
from ..errors import BadRequest, kind_for_status
from ..ipc import MAX_MESSAGE

log = logging.getLogger(__name__)

# Deferred commands waiting for or running in the thread at once; past it, 503.
MAX_DEFERRED = 8
# Support status reports refused without a lookup (no such support process, none
# running, a peer that is not on this box): this many a second, in bursts of up to
# twice that; past it they are answered 429 until the budget refills.
REFUSALS_PER_S = 20.0
# Lookups of a caller (is it the support process?) a second, in bursts of up to twice
# that: a support process reports every PING_INTERVAL, a flood gets 429 past it.
LOOKUPS_PER_S = 50.0

Reply = tuple[int, dict[str, Any]]


@dataclass
class Deferred:
    """A command's answer that needs blocking work: ``work`` runs in a thread, off the
    manager's loop; ``finish(result)`` then runs on the loop and makes the reply."""

    work: Callable[[], Any]
    finish: Callable[[Any], Reply]


Handler = Callable[[Any], "Reply | Deferred"]
F = TypeVar("F", bound=Callable[..., Any])
# The attribute :func:`handles` marks a handler method with.
_HANDLES = "_handles_command"


def handles(command: Command[Any]) -> Callable[[F], F]:
    """Mark a method as ``command``'s handler (:func:`handlers_of` collects them)."""

    def mark(method: F) -> F:
        setattr(method, _HANDLES, command.name)
        return method

    return mark


def handlers_of(*objects: object) -> dict[str, Handler]:
    """The handlers of ``objects``' marked methods, by command; one command, one handler."""
    found: dict[str, Handler] = {}
    for obj in objects:
        for attr in dir(type(obj)):
            name = getattr(getattr(type(obj), attr), _HANDLES, None)
            if name is None:
                continue
            if name in found:
                raise RuntimeError(f"two handlers of the command {name}")
            found[name] = getattr(obj, attr)
    return found


@dataclass
class Budget:
    """A token bucket: :meth:`take` spends one token; ``rate`` a second come back, up
    to twice ``rate``."""

    rate: float
    tokens: float
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        """Spend one token; False when none is left."""
        self.tokens = min(2 * self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def error(status: int, message: str, **extra: Any) -> Reply:
    """An error answer of a command: ``ERROR`` and ``ERROR_TYPE``, plus ``extra``."""
    return status, {"ERROR": message, "ERROR_TYPE": kind_for_status(status), **extra}


def json_depth(value: Any, limit: int) -> int:
    """Containers nested in a decoded JSON value; counting stops past ``limit``."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (dict, list))]
        if not level:
            break
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


class ControlServer:
    """Answers the control socket with ``handlers``: one for each command of the table.

    A command answers at once on the loop, or returns a :class:`Deferred`: its blocking
    part then runs in one helper thread, and its connection is answered when that is
    done, while the loop serves everything else (``/health/live``'s ping included).
    """

    def __init__(self, handlers: Mapping[str, Handler],
                 sel: selectors.BaseSelector | None = None) -> None:
        unhandled = sorted(set(COMMANDS) ^ set(handlers))
        if unhandled:
            raise RuntimeError(f"commands and handlers do not match: {unhandled}")
        self.handlers = handlers
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bis-control")
        self._done: queue.SimpleQueue[tuple[socket.socket, Deferred, Future[Any]]] = \
            queue.SimpleQueue()
        self._pending = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if sel is not None:  # None: commands called directly (tests), no socket served
            sel.register(self._wake_r, selectors.EVENT_READ, self._finish_deferred)

    def close(self) -> None:
        """Stop the helper thread (work in progress is dropped with its connection)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()

    def accept(self, listener: socket.socket) -> None:
        """Serve one connection (the listener is non-blocking; a client has 2 s)."""
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(2.0)
        keep = False
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) <= MAX_MESSAGE:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            reply = self.handle_request(buf)
            if isinstance(reply, Deferred):
                keep = self._defer(conn, reply)
                if not keep:
                    self._send(conn, error(503, "the manager is busy with other reports; retry "
                                                "shortly"))
            else:
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except OSError as exc:
            log.warning("control connection failed: %s", exc)
        except Exception:  # noqa: BLE001 - no command may stop the manager
            log.exception("control request failed")
        finally:
            if not keep:
                conn.close()

    def _defer(self, conn: socket.socket, deferred: Deferred) -> bool:
        """Start ``deferred``'s work in the thread; False when too many wait already."""
        if self._pending >= MAX_DEFERRED:
            return False
        self._pending += 1
        future = self._pool.submit(deferred.work)

        def done(fut: Future[Any]) -> None:
            # In the thread: hand the result to the loop and wake it.
            self._done.put((conn, deferred, fut))
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # a wake-up is pending already (or we are closing)

        future.add_done_callback(done)
        return True

    def _finish_deferred(self, sock: socket.socket) -> None:
        """On the loop: finish the deferred commands whose work is done, and answer them."""
        try:
            sock.recv(4096)
        except BlockingIOError:
            pass
        while not self._done.empty():
            conn, deferred, fut = self._done.get()
            self._pending -= 1
            try:
                reply = deferred.finish(fut.result())
            except Exception as exc:  # noqa: BLE001 - the boundary, as in handle_command
                log.exception("deferred command failed")
                reply = error(500, f"command failed: {type(exc).__name__}: {exc}")
            try:
                self._send(conn, reply)
            except OSError as exc:
                log.warning("control connection failed: %s", exc)
            finally:
                conn.close()

    @staticmethod
    def _send(conn: socket.socket, reply: Reply) -> None:
        status, body = reply
        conn.sendall(json.dumps({"status": status, "body": body}, default=str).encode() + b"\n")

    def handle_request(self, raw: bytes) -> dict[str, Any] | Deferred:
        """One raw control request line -> its reply; bad framing is a 400."""
        request: Any = None
        if len(raw) > MAX_MESSAGE:
            status, body = error(413, f"control request over {MAX_MESSAGE} bytes")
        else:
            try:
                request = json.loads(raw)
            except (ValueError, RecursionError):
                pass
            if isinstance(request, dict):
                return self.handle_command(request.get("cmd", ""), request.get("args") or {})
            status, body = error(400, "a control request is one JSON object")
        return {"status": status, "body": body}

    def handle_command(self, cmd: Any, args: Any) -> dict[str, Any] | Deferred:
        """Run one management command; the reply carries an HTTP status and a body.

        Every command runs behind this boundary: an exception is logged with its
        traceback and answered 500; the manager keeps running.
        """
        command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            answer: Reply | Deferred = error(404, f"unknown command {str(cmd)[:100]!r}")
        else:
            try:
                answer = self.handlers[command.name](command.check(args))
            except BadRequest as exc:  # the arguments do not fit the command's type
                answer = exc.status, exc.to_dict()
            except Exception as exc:  # noqa: BLE001 - the boundary: log, answer 500, go on
                log.exception("command %s failed", cmd)
                answer = error(500, f"command {cmd} failed: {type(exc).__name__}: {exc}")
        if isinstance(answer, Deferred):
            return answer
        status, body = answer
        return {"status": status, "body": body}
